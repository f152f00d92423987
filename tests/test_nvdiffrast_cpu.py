"""The CPU rasteriser behind the smoke preset's mesh export, on hand-computed cases."""
import sys
import types

import pytest
import torch

from threestudio_dreambooth3d.cpu import nvdiffrast as dr


def _clip(xy, z=0.0, w=1.0):
    xy = torch.tensor(xy, dtype=torch.float32)
    n = len(xy)
    z = torch.full((n,), float(z)) if not torch.is_tensor(z) else z
    w = torch.full((n,), float(w)) if not torch.is_tensor(w) else w
    return torch.cat([xy * w[:, None], (z * w)[:, None], w[:, None]], dim=1)


def test_lower_left_triangle_covers_exactly_the_pixels_below_the_diagonal():
    # 4x4 pixel centres at NDC (x+.5)/2-1; the hypotenuse x+y = -0.1 passes between them: inside iff x+y <= 2
    pos = _clip([[-1, -1], [0.9, -1], [-1, 0.9]])[None]
    rast, _ = dr.rasterize(None, pos, torch.tensor([[0, 1, 2]]), (4, 4))
    covered = rast[0, ..., 3] > 0
    expected = torch.tensor([[x + y <= 2 for x in range(4)] for y in range(4)])
    assert torch.equal(covered, expected)
    assert set(rast[0, ..., 3][covered].tolist()) == {1.0}  # triangle id + 1


def test_interpolating_positions_gives_back_the_pixel_centres():
    pos = _clip([[-0.9, -0.8], [0.95, -0.7], [0.1, 0.9]])[None]
    tri = torch.tensor([[0, 1, 2]])
    rast, _ = dr.rasterize(None, pos, tri, (8, 8))
    out, _ = dr.interpolate(pos[..., :2], rast, tri)
    ys, xs = torch.nonzero(rast[0, ..., 3] > 0, as_tuple=True)
    assert len(ys) > 10
    centres = torch.stack([(xs + 0.5) / 8 * 2 - 1, (ys + 0.5) / 8 * 2 - 1], dim=-1)
    assert torch.allclose(out[0, ys, xs], centres, atol=1e-5)
    assert torch.all(out[0][rast[0, ..., 3] == 0] == 0)


def test_barycentrics_are_perspective_correct():
    # with w != 1, interpolated clip (x, y, w) divided by w must land on the pixel centre
    w = torch.tensor([1.0, 3.0, 2.0])
    pos = _clip([[-0.9, -0.9], [0.9, -0.8], [0.0, 0.9]], w=w)[None]
    tri = torch.tensor([[0, 1, 2]])
    rast, _ = dr.rasterize(None, pos, tri, (8, 8))
    out, _ = dr.interpolate(pos[..., [0, 1, 3]], rast, tri)
    ys, xs = torch.nonzero(rast[0, ..., 3] > 0, as_tuple=True)
    ndc = out[0, ys, xs, :2] / out[0, ys, xs, 2:]
    centres = torch.stack([(xs + 0.5) / 8 * 2 - 1, (ys + 0.5) / 8 * 2 - 1], dim=-1)
    assert torch.allclose(ndc, centres, atol=1e-5)


def test_nearest_triangle_wins_whatever_the_drawing_order():
    full = [[-1, -1], [3, -1], [-1, 3]]
    pos = torch.cat([_clip(full, z=0.5), _clip(full, z=-0.5)])[None]
    for tri, near_id in ((torch.tensor([[0, 1, 2], [3, 4, 5]]), 2), (torch.tensor([[3, 4, 5], [0, 1, 2]]), 1)):
        rast, _ = dr.rasterize(None, pos, tri, (4, 4))
        assert torch.all(rast[0, ..., 3] == near_id)
        assert torch.allclose(rast[0, ..., 2], torch.full((4, 4), -0.5))


def test_install_fills_only_a_stand_in(monkeypatch):
    from threestudio_dreambooth3d.cpu.standin import StandIn

    stand_in = StandIn("nvdiffrast.torch")
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", stand_in)
    assert dr.install()
    assert stand_in.rasterize is dr.rasterize and stand_in.RasterizeGLContext is dr.RasterizeCPUContext
    # the configs export with context_type=cuda: the stand-in must serve that context too
    assert stand_in.RasterizeCudaContext is dr.RasterizeCPUContext
    with pytest.raises(AttributeError, match="not available"):
        stand_in.antialias  # everything else still explains itself
    real = types.ModuleType("nvdiffrast.torch")
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", real)
    assert not dr.install() and not hasattr(real, "rasterize")
