"""The stage-2 -> stage-3 camera mapping without threestudio: a pseudo view, written with its
camera and read back, is what that camera's rays see.

A known asymmetric scene (four coloured spheres, rendered analytically by ray casting) is
rendered through core camera rays, written as stage 2 writes renders (channel-first
batches, cameras.json), read back, and rendered again from the rays stage 3 builds from
the *stored* c2w and fovy. The two must agree pixel for pixel (up to 8-bit PNG rounding);
a view mirrored or rotated relative to its rays, or a camera stored mirrored, does not.
The threestudio tier (tests/integration/test_camera_consistency.py) checks the same
mapping with threestudio's renderer and a fitted NeRF.
"""
import pytest
import torch

from threestudio_dreambooth3d.core import cameras as C
from threestudio_dreambooth3d.core import pseudo_views as pv

CENTERS = torch.tensor([[0.45, 0.0, 0.0], [-0.25, 0.45, 0.2], [0.0, -0.4, -0.25], [-0.3, -0.1, 0.45]])
RADII = torch.tensor([0.3, 0.25, 0.22, 0.18])
COLORS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.15, 0.2, 0.9], [0.95, 0.9, 0.1]])


def cast(rays_o: torch.Tensor, rays_d: torch.Tensor) -> torch.Tensor:
    """Colour of the first sphere each ray hits (white background); [..., 3] rays -> [..., 3]."""
    d = torch.nn.functional.normalize(rays_d, dim=-1)
    oc = rays_o[..., None, :] - CENTERS  # [..., S, 3]
    b = (oc * d[..., None, :]).sum(-1)
    disc = b ** 2 - ((oc ** 2).sum(-1) - RADII ** 2)
    t = -b - disc.clamp(min=0).sqrt()
    t = torch.where((disc > 0) & (t > 0), t, torch.full_like(t, float("inf")))
    first = t.argmin(-1)
    hit = torch.isfinite(t.min(-1).values)
    return torch.where(hit[..., None], COLORS[first], torch.ones(3))


def render(batch) -> torch.Tensor:
    rays_o, rays_d = C.camera_rays(batch)
    return cast(rays_o, rays_d)  # [B, H, W, 3]


CAMERAS = {
    "orbit": lambda: C.orbit_cameras(8, (0.0, 30.0), 2.0, 60.0, 24, 32),
    "random": lambda: C.random_cameras(8, (-10.0, 45.0), (-180.0, 180.0), (1.5, 2.0), (40.0, 70.0), 24, 32, seed=1),
}


@pytest.fixture(params=sorted(CAMERAS))
def written(request, tmp_path):
    cams = CAMERAS[request.param]()
    images = render(cams)
    # stage 2 hands the writer channel-first renders [B, 3, H, W]
    folder = pv.write_pseudo_views(tmp_path / "set", images.permute(0, 3, 1, 2), cams, "a sks dog")
    return folder, images


def test_a_pseudo_view_is_what_its_stored_camera_sees(written):
    folder, images = written
    stored = pv.read_pseudo_views(folder)
    again = render(stored.camera_batch(with_rays=True))
    assert (again - stored.images).abs().max() <= 0.5 / 255 + 1e-6  # PNG rounding only
    assert (stored.images - images).abs().max() <= 0.5 / 255 + 1e-6
    assert images.std() > 0.2  # the views show the scene, not the background alone


def test_a_mirrored_or_rotated_view_does_not_match_its_rays(written):
    folder, _ = written
    stored = pv.read_pseudo_views(folder)
    again = render(stored.camera_batch(with_rays=True))
    for wrong in (stored.images.flip(2), stored.images.flip(1), stored.images.flip(1).flip(2)):
        per_view = (again - wrong).abs().mean(dim=(1, 2, 3))
        assert (per_view > 0.02).all(), per_view


def test_a_camera_stored_mirrored_does_not_match_its_view(written, tmp_path):
    folder, images = written
    stored = pv.read_pseudo_views(folder)
    mirrored = [dict(c, c2w=(torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0])) @ torch.tensor(c["c2w"])).tolist(),
                     azimuth_deg=-c["azimuth_deg"]) for c in stored.cameras]
    # y -> -y is the mirror of azimuth -> -azimuth; written as a set, it is a different camera per view
    other = pv.read_pseudo_views(pv.write_pseudo_views(tmp_path / "mirrored", images, mirrored, "a sks dog"))
    per_view = (render(other.camera_batch(with_rays=True)) - other.images).abs().mean(dim=(1, 2, 3))
    assert (per_view > 0.02).sum() >= 6, per_view  # views on the mirror plane itself may coincide


def test_the_mapping_has_threestudios_handedness():
    # camera on +x looking at the origin, up +z: +y is image right, +z image top (threestudio's
    # c2w columns [right | up | back]); the green sphere sits at +y, the blue at -y, the yellow high
    image = render(C.orbit_cameras(1, 0.0, 2.0, 60.0, 24, 32))[0]
    rows, cols = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")

    def centre(color):
        m = (image - COLORS[color]).abs().sum(-1) < 1e-6
        return rows[m].mean().item(), cols[m].mean().item()

    assert centre(1)[1] > 16 > centre(2)[1]
    assert centre(3)[0] < 12 < centre(2)[0]
