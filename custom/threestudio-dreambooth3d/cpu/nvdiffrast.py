"""Pure-torch ``rasterize``/``interpolate`` in nvdiffrast's conventions, for the mesh export on a CPU.

Why this exists: threestudio's ``mesh-exporter`` bakes the texture by rasterising the
mesh in UV space with nvdiffrast and interpolating world positions, and it builds an
nvdiffrast context even before that. nvdiffrast has only GPU back-ends, so on a CPU
(the smoke preset, the tests) ``cpu_compat``'s stand-in module would stop the export.
:func:`install` fills that stand-in with these two ops and the context classes; every
other nvdiffrast op keeps the stand-in's explanatory error. A real nvdiffrast is never
replaced.

Conventions copied from nvdiffrast: clip-space input ``pos [B, Nv, 4]``; pixel ``(x, y)``
has its centre at NDC ``((x + .5) / W * 2 - 1, (y + .5) / H * 2 - 1)`` (row 0 at y = -1);
``rast[..., :]`` = ``(u, v, z/w, triangle_id + 1)`` with 0 where empty, perspective-correct
barycentrics, the nearest z/w wins, both facings are drawn; ``interpolate`` returns
``u * a0 + v * a1 + (1 - u - v) * a2``.
"""
from __future__ import annotations

import sys
from typing import Sequence, Tuple, Union

import torch

from .standin import StandIn


class RasterizeCPUContext:
    """Takes the place of nvdiffrast's RasterizeGLContext and RasterizeCudaContext."""

    def __init__(self, output_db: bool = True, mode: str = "automatic", device=None):
        self.device = device


def _rasterize_one(clip: torch.Tensor, tri: torch.Tensor, height: int, width: int) -> torch.Tensor:
    out = torch.zeros(height, width, 4)
    zbuf = torch.full((height, width), float("inf"))
    w = clip[:, 3]
    ndc = clip[:, :3] / w[:, None]
    # vertex positions in pixel units, pixel centres at integers
    sx = (ndc[:, 0] + 1) * width / 2 - 0.5
    sy = (ndc[:, 1] + 1) * height / 2 - 0.5
    for f, (i0, i1, i2) in enumerate(tri.tolist()):
        if min(w[i0], w[i1], w[i2]) <= 0:
            continue  # behind the camera: nvdiffrast clips; exports never hit this
        xs_, ys_ = sx[[i0, i1, i2]], sy[[i0, i1, i2]]
        x_lo, x_hi = max(int(torch.ceil(xs_.min())), 0), min(int(torch.floor(xs_.max())), width - 1)
        y_lo, y_hi = max(int(torch.ceil(ys_.min())), 0), min(int(torch.floor(ys_.max())), height - 1)
        if x_lo > x_hi or y_lo > y_hi:
            continue
        x0, x1, x2 = xs_.tolist()
        y0, y1, y2 = ys_.tolist()
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        if abs(area) < 1e-12:
            continue
        ys, xs = torch.meshgrid(torch.arange(y_lo, y_hi + 1, dtype=torch.float32),
                                torch.arange(x_lo, x_hi + 1, dtype=torch.float32), indexing="ij")
        l1 = ((xs - x0) * (y2 - y0) - (ys - y0) * (x2 - x0)) / area
        l2 = ((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)) / area
        l0 = 1 - l1 - l2
        z = l0 * ndc[i0, 2] + l1 * ndc[i1, 2] + l2 * ndc[i2, 2]
        window = zbuf[y_lo:y_hi + 1, x_lo:x_hi + 1]
        hit = (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (z >= -1) & (z <= 1) & (z < window)
        if not hit.any():
            continue
        # perspective-correct barycentrics: screen-space weights divided by w, renormalised
        p0, p1, p2 = l0 / w[i0], l1 / w[i1], l2 / w[i2]
        s = p0 + p1 + p2
        values = torch.stack([p0 / s, p1 / s, z, torch.full_like(z, f + 1)], dim=-1)
        window[hit] = z[hit]
        region = out[y_lo:y_hi + 1, x_lo:x_hi + 1]
        region[hit] = values[hit]
    return out


def rasterize(glctx, pos: torch.Tensor, tri: torch.Tensor, resolution: Union[int, Sequence[int]],
              ranges=None, grad_db: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """nvdiffrast.torch.rasterize (instanced mode, no gradients): ``(rast [B,H,W,4], rast_db [B,H,W,4])``."""
    if ranges is not None:
        raise NotImplementedError("nvdiffrast_cpu.rasterize supports instanced mode only (ranges=None)")
    height, width = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    pos_cpu, tri_cpu = pos.detach().float().cpu(), tri.detach().long().cpu()
    rast = torch.stack([_rasterize_one(p, tri_cpu, height, width) for p in pos_cpu]).to(pos.device)
    return rast, torch.zeros_like(rast)


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, rast_db=None,
                diff_attrs=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """nvdiffrast.torch.interpolate without derivatives: ``(out [B,H,W,C], empty)``; zeros where empty."""
    tid = rast[..., 3].long() - 1
    covered = tid >= 0
    corners = tri.long()[tid.clamp(min=0)]  # [B, H, W, 3]
    batch = attr.shape[0]
    outs = []
    for b in range(rast.shape[0]):
        a = attr[b if batch > 1 else 0].float()[corners[b]]  # [H, W, 3, C]
        u, v = rast[b, ..., 0:1], rast[b, ..., 1:2]
        val = u * a[..., 0, :] + v * a[..., 1, :] + (1 - u - v) * a[..., 2, :]
        outs.append(torch.where(covered[b, ..., None], val, torch.zeros_like(val)))
    return torch.stack(outs), torch.empty(0, device=attr.device)


def install() -> bool:
    """Fill cpu_compat's nvdiffrast stand-in with these ops; False when a real nvdiffrast is loaded."""
    module = sys.modules.get("nvdiffrast.torch")
    if not isinstance(module, StandIn):
        return False
    module.RasterizeGLContext = module.RasterizeCudaContext = RasterizeCPUContext
    module.rasterize, module.interpolate = rasterize, interpolate
    return True
