"""Orbit cameras in threestudio's conventions, without importing threestudio.

Stage 2 renders pseudo views from these cameras and stage 3 casts rays from the same
ones, so they must mean exactly what threestudio's random-camera datamodule means
(``threestudio/data/uncond.py``, ``threestudio/utils/ops.py``):

* world is right-handed and z-up; from (elevation, azimuth, distance) the camera sits
  at ``d (cos e cos a, cos e sin a, sin e)``: azimuth 0 is on +x, 90 on +y;
* it looks at the origin with up +z; ``c2w = [right | up | -lookat | position]``
  (OpenGL camera: x right, y up, looking down -z);
* ``focal = 0.5 * height / tan(fovy / 2)`` in pixels, ray directions through pixel
  centres, ``(u - W/2) / f, -(v - H/2) / f, -1`` rotated by c2w and normalised.

Batches use threestudio's keys and units: ``elevation``/``azimuth`` in degrees,
``fovy`` in radians, ``camera_distances``, ``c2w`` [B, 4, 4], ``camera_positions``,
``light_positions`` (= camera positions, as threestudio's eval cameras), ``proj_mtx``,
``mvp_mtx``, ``height``, ``width``; plus ``focal`` [B] in pixels and, on request,
``rays_o``/``rays_d`` [B, H, W, 3].
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Scalars = Union[float, Sequence[float], torch.Tensor]


def _vec(x: Scalars) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32).reshape(-1)


def spherical_to_cartesian(elevation_deg: Scalars, azimuth_deg: Scalars, distance: Scalars) -> torch.Tensor:
    """Camera positions [B, 3]: x back, y right, z up; azimuth from +x toward +y."""
    e, a, d = torch.broadcast_tensors(_vec(elevation_deg), _vec(azimuth_deg), _vec(distance))
    e, a = torch.deg2rad(e), torch.deg2rad(a)
    return torch.stack([d * torch.cos(e) * torch.cos(a), d * torch.cos(e) * torch.sin(a), d * torch.sin(e)], -1)


def look_at(camera_positions: torch.Tensor, center: Optional[torch.Tensor] = None,
            up: Optional[torch.Tensor] = None) -> torch.Tensor:
    """c2w [B, 4, 4] of cameras at ``camera_positions`` looking at ``center`` (origin), up +z."""
    center = torch.zeros_like(camera_positions) if center is None else center.expand_as(camera_positions)
    up = camera_positions.new_tensor([0.0, 0.0, 1.0]) if up is None else up
    up = up.expand_as(camera_positions)
    lookat = F.normalize(center - camera_positions, dim=-1)
    right = F.normalize(torch.cross(lookat, up, dim=-1), dim=-1)
    up = F.normalize(torch.cross(right, lookat, dim=-1), dim=-1)
    c2w = torch.zeros(camera_positions.shape[0], 4, 4, dtype=camera_positions.dtype, device=camera_positions.device)
    c2w[:, :3, :3] = torch.stack([right, up, -lookat], dim=-1)
    c2w[:, :3, 3] = camera_positions
    c2w[:, 3, 3] = 1.0
    return c2w


def focal_from_fovy(fovy_rad: torch.Tensor, height: int) -> torch.Tensor:
    return 0.5 * height / torch.tan(0.5 * fovy_rad)


def get_ray_directions(H: int, W: int, focal: Union[float, Tuple[float, float]],
                       principal: Optional[Tuple[float, float]] = None, use_pixel_centers: bool = True) -> torch.Tensor:
    """Camera-space ray directions [H, W, 3] (threestudio.utils.ops.get_ray_directions)."""
    fx, fy = (focal, focal) if isinstance(focal, (int, float)) else focal
    cx, cy = (W / 2, H / 2) if principal is None else principal
    offset = 0.5 if use_pixel_centers else 0.0
    i, j = torch.meshgrid(torch.arange(W, dtype=torch.float32) + offset,
                          torch.arange(H, dtype=torch.float32) + offset, indexing="xy")
    return torch.stack([(i - cx) / fx, -(j - cy) / fy, -torch.ones_like(i)], -1)


def get_rays(directions: torch.Tensor, c2w: torch.Tensor, keepdim: bool = False,
             normalize: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """World-space ``(rays_o, rays_d)`` (threestudio.utils.ops.get_rays, without noise).

    ``directions`` [N, 3], [H, W, 3] or [B, H, W, 3]; ``c2w`` [4, 4] or [B, 4, 4]. Image
    directions with a batch of cameras give [B, H, W, 3]; ``keepdim=False`` flattens to
    [-1, 3].
    """
    rot, origin = c2w[..., :3, :3], c2w[..., :3, 3]
    if directions.ndim >= 3 and c2w.ndim == 3:  # image(s) x a batch of cameras
        rot, origin = rot[:, None, None], origin[:, None, None]
    rays_d = (directions[..., None, :] * rot).sum(-1)
    rays_o = origin.expand(rays_d.shape)
    if normalize:
        rays_d = F.normalize(rays_d, dim=-1)
    if not keepdim:
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    return rays_o, rays_d


def projection_matrix(fovy_rad: torch.Tensor, aspect_wh: float, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
    """OpenGL projection [B, 4, 4] with threestudio's flipped y (for nvdiffrast)."""
    proj = torch.zeros(fovy_rad.shape[0], 4, 4, dtype=torch.float32)
    proj[:, 0, 0] = 1.0 / (torch.tan(fovy_rad / 2.0) * aspect_wh)
    proj[:, 1, 1] = -1.0 / torch.tan(fovy_rad / 2.0)
    proj[:, 2, 2] = -(far + near) / (far - near)
    proj[:, 2, 3] = -2.0 * far * near / (far - near)
    proj[:, 3, 2] = -1.0
    return proj


def mvp_matrix(c2w: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    w2c = torch.zeros_like(c2w)
    rot_t = c2w[:, :3, :3].transpose(1, 2)
    w2c[:, :3, :3] = rot_t
    w2c[:, :3, 3:] = -rot_t @ c2w[:, :3, 3:]
    w2c[:, 3, 3] = 1.0
    return proj.to(c2w) @ w2c


def camera_batch(c2w: torch.Tensor, fovy_deg: Scalars, height: int, width: int, elevation_deg: Scalars,
                 azimuth_deg: Scalars, with_rays: bool = False) -> Dict[str, object]:
    """A threestudio camera batch for given c2w matrices (e.g. read back from disk)."""
    c2w = torch.as_tensor(c2w, dtype=torch.float32).reshape(-1, 4, 4)
    n = c2w.shape[0]
    fovy = torch.deg2rad(_vec(fovy_deg)).expand(n).clone()
    positions = c2w[:, :3, 3].clone()
    proj = projection_matrix(fovy, width / height)
    batch = {
        "c2w": c2w,
        "camera_positions": positions,
        "light_positions": positions.clone(),
        "elevation": _vec(elevation_deg).expand(n).clone(),
        "azimuth": _vec(azimuth_deg).expand(n).clone(),
        "camera_distances": positions.norm(dim=-1),
        "fovy": fovy,
        "focal": focal_from_fovy(fovy, height),
        "height": int(height),
        "width": int(width),
        "proj_mtx": proj,
        "mvp_mtx": mvp_matrix(c2w, proj),
    }
    if with_rays:
        batch["rays_o"], batch["rays_d"] = camera_rays(batch)
    return batch


def camera_rays(cameras: Dict[str, object], normalize: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rays [B, H, W, 3] of a camera batch, as threestudio's datamodule computes them."""
    H, W = int(cameras["height"]), int(cameras["width"])
    directions = get_ray_directions(H, W, 1.0)[None].repeat(len(cameras["focal"]), 1, 1, 1)
    directions[..., :2] = directions[..., :2] / cameras["focal"][:, None, None, None]
    return get_rays(directions, cameras["c2w"], keepdim=True, normalize=normalize)


def camera_from_spherical(elevation_deg: Scalars, azimuth_deg: Scalars, distance: Scalars = 1.5,
                          fovy_deg: Scalars = 70.0, height: int = 64, width: int = 64,
                          with_rays: bool = False) -> Dict[str, object]:
    """Cameras on a sphere around the origin looking at it; scalars or per-view sequences."""
    e, a, d, fov = torch.broadcast_tensors(_vec(elevation_deg), _vec(azimuth_deg), _vec(distance), _vec(fovy_deg))
    if (e.abs() >= 90).any():
        raise ValueError(f"elevation must be in (-90, 90) degrees (at the poles 'up' is undefined), got {e.tolist()}")
    if (d <= 0).any() or ((fov <= 0) | (fov >= 180)).any():
        raise ValueError(f"need distance > 0 and 0 < fovy < 180 degrees, got {d.tolist()}, {fov.tolist()}")
    c2w = look_at(spherical_to_cartesian(e, a, d))
    batch = camera_batch(c2w, fov, height, width, e, a, with_rays=with_rays)
    batch["camera_distances"] = d.clone()  # exact, not re-derived from the position
    return batch


def orbit_cameras(n_views: int, elevation_deg: Union[float, Sequence[float]] = 15.0, distance: float = 1.5,
                  fovy_deg: float = 70.0, height: int = 64, width: int = 64, azimuth_start_deg: float = 0.0,
                  with_rays: bool = False) -> Dict[str, object]:
    """``n_views`` cameras evenly spaced in azimuth, first at ``azimuth_start_deg``.

    Defaults are threestudio's eval camera (15 deg, 1.5, 70 deg fovy). Azimuths follow
    threestudio's validation split (``linspace(0, 360, n + 1)[:n]``: no repeated view).
    ``elevation_deg`` is one value, a ``(low, high)`` pair ramped linearly over the
    views, or one value per view.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    azimuth = azimuth_start_deg + torch.linspace(0.0, 360.0, n_views + 1)[:n_views]
    elevation = _vec(elevation_deg)
    if elevation.numel() == 2:
        elevation = torch.linspace(float(elevation[0]), float(elevation[1]), n_views)
    elif elevation.numel() not in (1, n_views):
        raise ValueError(f"elevation_deg: give one value, a (low, high) pair or {n_views} values, "
                         f"got {elevation.numel()}")
    return camera_from_spherical(elevation, azimuth, distance, fovy_deg, height, width, with_rays=with_rays)


def random_cameras(n_views: int, elevation_range_deg: Tuple[float, float] = (-10.0, 90.0),
                   azimuth_range_deg: Tuple[float, float] = (-180.0, 180.0),
                   distance_range: Tuple[float, float] = (1.0, 1.5), fovy_range_deg: Tuple[float, float] = (40.0, 70.0),
                   height: int = 64, width: int = 64, seed: int = 0, uniform_azimuth: bool = True,
                   with_rays: bool = False) -> Dict[str, object]:
    """``n_views`` cameras drawn as threestudio's training cameras draw them, reproducibly.

    The distributions of ``RandomCameraIterableDataset.collate`` (threestudio/data/uncond.py)
    for the given ranges: elevation uniform in angle or uniform on the sphere (a coin flip
    per view; threestudio flips once per batch, the same mixture for independent draws),
    azimuth stratified so the views cover the range (``batch_uniform_azimuth``; plain
    uniform when ``uniform_azimuth`` is False), distance and fovy uniform. The random
    camera/centre/up perturbations are left out: the cameras look at the origin, as the
    eval cameras do, so a view's name (front/back...) follows from its angles.
    Views come in azimuth order when stratified. Same arguments, same cameras (a private
    generator seeded with ``seed``; the global RNG is untouched).
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    ranges = {"elevation_range_deg": elevation_range_deg, "azimuth_range_deg": azimuth_range_deg,
              "distance_range": distance_range, "fovy_range_deg": fovy_range_deg}
    for name, r in ranges.items():
        if len(r) != 2 or float(r[0]) > float(r[1]):
            raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {list(r)}")
    # the poles have no 'up' (look_at needs it); threestudio's default range reaches 90
    e_lo, e_hi = max(float(elevation_range_deg[0]), -89.0), min(float(elevation_range_deg[1]), 89.0)
    g = torch.Generator().manual_seed(int(seed))

    def uniform(lo: float, hi: float, u: Optional[torch.Tensor] = None) -> torch.Tensor:
        u = torch.rand(n_views, generator=g) if u is None else u
        return u * (float(hi) - float(lo)) + float(lo)

    on_sphere = torch.rand(n_views, generator=g) >= 0.5
    uniform_angle = uniform(e_lo, e_hi)
    sin_lo, sin_hi = math.sin(math.radians(e_lo)), math.sin(math.radians(e_hi))
    sphere = torch.rad2deg(torch.asin(uniform(sin_lo, sin_hi)))  # inverse-transform sampling
    elevation = torch.where(on_sphere, sphere, uniform_angle)
    a_lo, a_hi = azimuth_range_deg
    u = (torch.rand(n_views, generator=g) + torch.arange(n_views)) / n_views if uniform_azimuth else None
    azimuth = uniform(a_lo, a_hi, u)
    distance = uniform(*distance_range)
    fovy = uniform(*fovy_range_deg)
    return camera_from_spherical(elevation, azimuth, distance, fovy, height, width, with_rays=with_rays)


def select_cameras(cameras: Dict[str, object], index) -> Dict[str, object]:
    """The cameras at ``index`` (int, list, slice or tensor), still batched."""
    if isinstance(index, int):
        index = [index]
    return {k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in cameras.items()}



def multiview_cameras(n_objects: int, n_view: int = 4, elevation_range_deg: Tuple[float, float] = (0.0, 30.0),
                      azimuth_range_deg: Tuple[float, float] = (-180.0, 180.0),
                      distance_range: Tuple[float, float] = (0.8, 1.0), fovy_range_deg: Tuple[float, float] = (15.0, 60.0),
                      relative_radius: bool = True, height: int = 64, width: int = 64,
                      light_distance_range: Tuple[float, float] = (0.8, 1.5), light_position_perturb: float = 1.0,
                      generator: Optional[torch.Generator] = None, with_rays: bool = False) -> Dict[str, object]:
    """``n_objects`` sets of ``n_view`` cameras, as MVDream-threestudio's random multi-view datamodule.

    Per object: one elevation (a coin flip per call chooses uniform in angle or uniform on
    the sphere, as the original's per-batch flip), one fovy, one distance, one light
    distance and light offset; azimuths ``a0 + k * span / n_view`` (k = 0..n_view-1) with
    ``a0`` uniform in the first ``span / n_view``, so the views sit at equal gaps around the
    object. ``relative_radius`` (the original's default) scales the distance by
    ``1 / tan(fovy / 2)``, so the object fills the same part of the image at any fovy.
    Lights follow threestudio's "dreamfusion" strategy (near the camera). Camera/centre/up
    perturbations are left out (MVDream's config sets them to 0). The views of one object
    are consecutive: ``[obj0 v0..v3, obj1 v0..v3, ...]``; ``fovy`` in radians, angles in
    degrees, as :func:`camera_batch`. ``generator`` makes the draw reproducible.
    """
    if n_objects < 1 or n_view < 1:
        raise ValueError(f"need n_objects >= 1 and n_view >= 1, got {n_objects}, {n_view}")
    ranges = {"elevation_range_deg": elevation_range_deg, "azimuth_range_deg": azimuth_range_deg,
              "distance_range": distance_range, "fovy_range_deg": fovy_range_deg,
              "light_distance_range": light_distance_range}
    for name, r in ranges.items():
        if len(r) != 2 or float(r[0]) > float(r[1]):
            raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {list(r)}")
    e_lo, e_hi = max(float(elevation_range_deg[0]), -89.0), min(float(elevation_range_deg[1]), 89.0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    def per_object(lo: float, hi: float) -> torch.Tensor:
        return (rand(n_objects) * (float(hi) - float(lo)) + float(lo)).repeat_interleave(n_view)

    if float(rand(1)) < 0.5:
        elevation = per_object(e_lo, e_hi)
    else:  # uniform on the sphere between the two elevations (inverse-transform sampling)
        sin_lo, sin_hi = math.sin(math.radians(e_lo)), math.sin(math.radians(e_hi))
        elevation = torch.rad2deg(torch.asin(per_object(sin_lo, sin_hi)))
    a_lo, a_hi = float(azimuth_range_deg[0]), float(azimuth_range_deg[1])
    azimuth = ((rand(n_objects, 1) + torch.arange(n_view)[None]) / n_view).reshape(-1) * (a_hi - a_lo) + a_lo
    fovy = per_object(*fovy_range_deg)
    distance = per_object(*distance_range)
    if relative_radius:
        distance = distance / torch.tan(0.5 * torch.deg2rad(fovy))
    batch = camera_from_spherical(elevation, azimuth, distance, fovy, height, width, with_rays=with_rays)
    light_distance = per_object(*light_distance_range)
    offset = (torch.randn(n_objects, 3, generator=generator) * light_position_perturb).repeat_interleave(n_view, 0)
    light_direction = F.normalize(batch["camera_positions"] + offset, dim=-1)
    batch["light_positions"] = light_direction * light_distance[:, None]
    return batch
