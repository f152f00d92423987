"""Pure-torch stand-ins for the few nerfacc packed ops threestudio's volume renderers call.

nerfacc implements its packed ("flattened samples + ray_indices") scans, ``pack_info``
and grid marching only as CUDA kernels, and on a machine with ``nvcc`` but no GPU a call
even tries to JIT-compile them. threestudio's ``nerf-volume-renderer`` needs:

* ``OccGridEstimator.sampling`` (grid marching, then visibility pruning),
* ``render_weight_from_density`` / ``render_weight_from_alpha`` on packed samples,
* ``accumulate_along_rays`` (already pure torch in nerfacc).

This module re-implements the first two with plain, device-agnostic torch ops: samples
are put in a dense ``[n_rays, max_samples]`` layout, scanned with ``cumsum``/``cumprod``
(exact and differentiable), and gathered back. :func:`install` patches nerfacc so that
CPU tensors take these paths, and CUDA tensors too when nerfacc's CUDA extension cannot
be loaded or built (a frequent install failure; one warning says so); where it loads,
CUDA tensors keep nerfacc's kernels. Only ``cpu.compat.enable()`` calls it. Nothing here
imports nerfacc at module level, so the functions are tested without it.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "pack_info",
    "exclusive_sum",
    "inclusive_sum",
    "exclusive_prod",
    "inclusive_prod",
    "render_transmittance_from_density",
    "render_weight_from_density",
    "render_weight_from_alpha",
    "ray_aabb_intersect",
    "occgrid_sampling",
    "install",
]


# -- packed layout -----------------------------------------------------------------------------
def pack_info(ray_indices: Tensor, n_rays: Optional[int] = None) -> Tensor:
    """``[n_rays, 2]`` (start, count) of each ray's samples; ``ray_indices`` must be sorted."""
    ray_indices = ray_indices.long()
    if n_rays is None:
        n_rays = int(ray_indices.max().item()) + 1 if ray_indices.numel() else 0
    counts = torch.bincount(ray_indices, minlength=n_rays)[:n_rays]
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, counts], dim=-1)


def _dense_index(packed_info: Tensor, n_samples: int) -> Tuple[Tensor, Tensor, int]:
    """(ray id, position within the ray) of every packed sample, and the longest ray."""
    starts, counts = packed_info.long().unbind(-1)
    ray_ids = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    if len(ray_ids) != n_samples:
        raise ValueError(f"packed_info covers {len(ray_ids)} samples but the input has {n_samples}")
    pos = torch.arange(n_samples, device=counts.device) - starts[ray_ids]
    width = int(counts.max().item()) if len(counts) else 0
    return ray_ids, pos, width


def _scan(inputs: Tensor, packed_info: Tensor, op: str, exclusive: bool) -> Tensor:
    if inputs.dim() != 1:
        raise ValueError("packed scans take flattened (1-D) inputs")
    n = inputs.shape[0]
    if n == 0:
        return inputs.clone()
    ray_ids, pos, width = _dense_index(packed_info, n)
    identity = 0.0 if op == "sum" else 1.0
    # the padding after each ray's last sample never flows back into that ray's values
    dense = inputs.new_full((len(packed_info), width + int(exclusive)), identity)
    dense = dense.index_put((ray_ids, pos + int(exclusive)), inputs)
    scanned = torch.cumsum(dense, -1) if op == "sum" else torch.cumprod(dense, -1)
    return scanned[ray_ids, pos]


def inclusive_sum(inputs: Tensor, packed_info: Tensor) -> Tensor:
    return _scan(inputs, packed_info, "sum", exclusive=False)


def exclusive_sum(inputs: Tensor, packed_info: Tensor) -> Tensor:
    return _scan(inputs, packed_info, "sum", exclusive=True)


def inclusive_prod(inputs: Tensor, packed_info: Tensor) -> Tensor:
    return _scan(inputs, packed_info, "prod", exclusive=False)


def exclusive_prod(inputs: Tensor, packed_info: Tensor) -> Tensor:
    return _scan(inputs, packed_info, "prod", exclusive=True)


# -- volume rendering weights (nerfacc.volrend semantics) ---------------------------------------
def _packed(packed_info: Optional[Tensor], ray_indices: Optional[Tensor], n_rays: Optional[int]) -> Tensor:
    if packed_info is None:
        if ray_indices is None:
            raise ValueError("flattened samples need packed_info or ray_indices")
        packed_info = pack_info(ray_indices, n_rays)
    return packed_info


def render_transmittance_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, packed_info: Optional[Tensor] = None,
    ray_indices: Optional[Tensor] = None, n_rays: Optional[int] = None, prefix_trans: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """T_i = exp(-sum_{j<i} sigma_j delta_j) and alpha_i = 1 - exp(-sigma_i delta_i)."""
    packed_info = _packed(packed_info, ray_indices, n_rays)
    sigmas_dt = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigmas_dt)
    trans = torch.exp(-exclusive_sum(sigmas_dt, packed_info))
    if prefix_trans is not None:
        trans = trans * prefix_trans
    return trans, alphas


def render_weight_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, packed_info: Optional[Tensor] = None,
    ray_indices: Optional[Tensor] = None, n_rays: Optional[int] = None, prefix_trans: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """(weights, transmittance, alphas), each shaped like ``sigmas``."""
    trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, packed_info, ray_indices, n_rays, prefix_trans)
    return trans * alphas, trans, alphas


def render_weight_from_alpha(
    alphas: Tensor, packed_info: Optional[Tensor] = None, ray_indices: Optional[Tensor] = None,
    n_rays: Optional[int] = None, prefix_trans: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """(weights, transmittance) with T_i = prod_{j<i} (1 - alpha_j)."""
    trans = exclusive_prod(1.0 - alphas, _packed(packed_info, ray_indices, n_rays))
    if prefix_trans is not None:
        trans = trans * prefix_trans
    return trans * alphas, trans


# -- occupancy-grid marching --------------------------------------------------------------------
def ray_aabb_intersect(rays_o: Tensor, rays_d: Tensor, aabb: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Slab test: entry/exit distance of each ray through ``aabb`` = (xmin, ymin, zmin, xmax, ymax, zmax)."""
    safe_d = torch.where(rays_d.abs() < 1e-10, torch.full_like(rays_d, 1e-10), rays_d)
    t0 = (aabb[:3] - rays_o) / safe_d
    t1 = (aabb[3:] - rays_o) / safe_d
    t_near = torch.minimum(t0, t1).amax(-1)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far, t_far > t_near


@torch.no_grad()
def occgrid_sampling(
    rays_o: Tensor,
    rays_d: Tensor,
    aabb: Tensor,
    binaries: Optional[Tensor] = None,
    sigma_fn: Optional[Callable] = None,
    alpha_fn: Optional[Callable] = None,
    near_plane: float = 0.0,
    far_plane: float = 1e10,
    t_min: Optional[Tensor] = None,
    t_max: Optional[Tensor] = None,
    render_step_size: float = 1e-3,
    early_stop_eps: float = 1e-4,
    alpha_thre: float = 0.0,
    stratified: bool = False,
    cone_angle: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``OccGridEstimator.sampling`` for one grid level: packed (ray_indices, t_starts, t_ends).

    Marches each ray in steps of ``render_step_size`` from where it enters ``aabb`` (or
    the near plane), keeps the steps whose midpoint lies in an occupied cell of
    ``binaries`` ([X, Y, Z] bools over ``aabb``; None keeps all), then drops samples
    that ``sigma_fn``/``alpha_fn`` mark invisible, as nerfacc does.
    """
    if cone_angle != 0.0:
        raise NotImplementedError("the pure-torch fallback marches with a constant step (cone_angle=0), as threestudio uses it")
    aabb = aabb.to(rays_o)
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, aabb)
    near = torch.clamp(t_near, min=near_plane)
    far = torch.clamp(t_far, max=far_plane)
    if t_min is not None:
        near = torch.maximum(near, t_min)
    if t_max is not None:
        far = torch.minimum(far, t_max)
    if stratified:
        near = near + torch.rand_like(near) * render_step_size
    n_steps = torch.floor((far - near) / render_step_size).clamp(min=0)
    n_steps = torch.where(hit, n_steps, torch.zeros_like(n_steps)).long()
    width = int(n_steps.max().item()) if n_steps.numel() else 0
    steps = torch.arange(width, device=rays_o.device)
    valid = steps[None, :] < n_steps[:, None]
    t_starts = near[:, None] + steps[None, :] * render_step_size
    t_ends = t_starts + render_step_size
    if binaries is not None and width > 0:
        mids = rays_o[:, None, :] + rays_d[:, None, :] * ((t_starts + t_ends) / 2)[..., None]
        res = torch.tensor(binaries.shape, device=rays_o.device)
        cell = ((mids - aabb[:3]) / (aabb[3:] - aabb[:3]) * res).floor().long()
        inside = ((cell >= 0) & (cell < res)).all(-1)
        cell = torch.minimum(cell.clamp(min=0), res - 1)
        occupied = binaries.to(rays_o.device)[cell[..., 0], cell[..., 1], cell[..., 2]]
        valid = valid & inside & occupied
    # row-major boolean indexing keeps each ray's samples contiguous and in order: packed
    ray_indices = torch.arange(len(rays_o), device=rays_o.device)[:, None].expand_as(valid)[valid]
    t_starts, t_ends = t_starts[valid], t_ends[valid]

    if (alpha_thre > 0.0 or early_stop_eps > 0.0) and (sigma_fn is not None or alpha_fn is not None):
        packed_info = pack_info(ray_indices, len(rays_o))
        if t_starts.numel() == 0:
            return ray_indices, t_starts, t_ends
        if sigma_fn is not None:
            trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigma_fn(t_starts, t_ends, ray_indices), packed_info)
        else:
            alphas = alpha_fn(t_starts, t_ends, ray_indices)
            _, trans = render_weight_from_alpha(alphas, packed_info)
        keep = trans >= early_stop_eps
        if alpha_thre > 0:
            keep = keep & (alphas >= alpha_thre)
        ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
    return ray_indices, t_starts, t_ends


# -- patching nerfacc ---------------------------------------------------------------------------
_INSTALLED = False
_CUDA_KERNELS: Optional[bool] = None


def cuda_kernels_available() -> bool:
    """Whether nerfacc's CUDA extension loads (prebuilt, or JIT-built on first use as nerfacc does).

    Asked only for CUDA tensors, once per process; False (with one warning) sends CUDA
    tensors to the pure-torch ops.
    """
    global _CUDA_KERNELS
    if _CUDA_KERNELS is None:
        try:
            from nerfacc.cuda._backend import _C

            _CUDA_KERNELS = _C is not None
        except Exception:  # a failed JIT build raises RuntimeError/OSError/ImportError
            _CUDA_KERNELS = False
        if not _CUDA_KERNELS:
            warnings.warn("nerfacc's CUDA extension could not be loaded or built: CUDA tensors use the pure-torch "
                          "ops of threestudio_dreambooth3d.cpu.nerfacc (slower).", RuntimeWarning, stacklevel=2)
    return _CUDA_KERNELS


def _use_kernel(tensor: Tensor) -> bool:
    return tensor.is_cuda and cuda_kernels_available()


def _kernel_or_torch(kernel_fn: Callable, torch_fn: Callable, tensor_arg: int = 0) -> Callable:
    def dispatch(*args, **kwargs):
        first = args[tensor_arg] if len(args) > tensor_arg else next(iter(kwargs.values()))
        return kernel_fn(*args, **kwargs) if _use_kernel(first) else torch_fn(*args, **kwargs)

    dispatch.__name__ = getattr(kernel_fn, "__name__", "dispatch")
    dispatch.__doc__ = f"nerfacc's kernel where it loads, else nerfacc_cpu.{torch_fn.__name__}."
    dispatch._nerfacc_cpu_original = kernel_fn  # type: ignore[attr-defined]
    return dispatch


def _packed_scan(original: Callable, torch_fn: Callable) -> Callable:
    def scan(inputs: Tensor, packed_info: Optional[Tensor] = None) -> Tensor:
        if packed_info is None or _use_kernel(inputs):
            return original(inputs, packed_info)
        return torch_fn(inputs, packed_info)

    scan.__name__ = original.__name__
    scan._nerfacc_cpu_original = original  # type: ignore[attr-defined]
    return scan


def install() -> bool:
    """Route nerfacc's packed ops and occupancy-grid sampling to this module for CPU tensors
    (and CUDA tensors when nerfacc's kernels cannot load).

    Returns False when nerfacc is not installed (nothing to patch). Idempotent.
    """
    global _INSTALLED
    if _INSTALLED:
        return True
    try:
        import nerfacc
        import nerfacc.pack
        import nerfacc.scan
        import nerfacc.volrend
        from nerfacc.estimators.occ_grid import OccGridEstimator
    except ImportError:
        return False

    patched_pack = _kernel_or_torch(nerfacc.pack.pack_info, pack_info)
    scans = {name: _packed_scan(getattr(nerfacc.scan, name), globals()[name])
             for name in ("inclusive_sum", "exclusive_sum", "inclusive_prod", "exclusive_prod")}
    # volrend and the package namespace hold their own references to these names
    for module in (nerfacc, nerfacc.pack, nerfacc.scan, nerfacc.volrend):
        if hasattr(module, "pack_info"):
            module.pack_info = patched_pack
        for name, fn in scans.items():
            if hasattr(module, name):
                setattr(module, name, fn)

    original_sampling = OccGridEstimator.sampling

    def sampling(self, rays_o: Tensor, rays_d: Tensor, *args, **kwargs):
        if _use_kernel(rays_o):
            return original_sampling(self, rays_o, rays_d, *args, **kwargs)
        if args:
            raise TypeError("pass OccGridEstimator.sampling options by keyword to the pure-torch fallback")
        if self.levels != 1:
            raise NotImplementedError("the pure-torch fallback supports one grid level (threestudio uses levels=1)")
        if kwargs.get("alpha_thre", 0.0) > 0.0:
            # nerfacc caps the alpha threshold by the grid's mean occupancy
            kwargs["alpha_thre"] = min(kwargs["alpha_thre"], self.occs.mean().item())
        return occgrid_sampling(rays_o, rays_d, self.aabbs[0], self.binaries[0], **kwargs)

    sampling.__doc__ = original_sampling.__doc__
    sampling._nerfacc_cpu_original = original_sampling  # type: ignore[attr-defined]
    OccGridEstimator.sampling = sampling
    _INSTALLED = True
    return True
