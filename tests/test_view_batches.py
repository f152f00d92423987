"""The batches of pseudo-multiview-datamodule without threestudio (core/view_batches.py): the
val/test cameras and a pseudo-view set at the render size."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from threestudio_dreambooth3d.core import cameras
from threestudio_dreambooth3d.core.pseudo_views import read_pseudo_views, write_pseudo_views
from threestudio_dreambooth3d.core.view_batches import CameraDataset, PseudoViews, eval_cameras, resize_hwc

# the keys of the datamodule's config the cameras read (its defaults where the test does not care)
CFG = dict(n_val_views=2, n_test_views=6, eval_elevations_deg=None, eval_elevation_deg=15.0, eval_camera_distance=2.0,
           eval_fovy_deg=70.0, eval_height=32, eval_width=32, test_cameras="orbit", test_camera_seed=0,
           elevation_range=[-10, 45], azimuth_range=[-180, 180], camera_distance_range=[1.5, 2.0], fovy_range=[40, 70],
           batch_uniform_azimuth=True, rays_d_normalize=True)


def _cfg(**kw):
    return SimpleNamespace(**{**CFG, **kw})


def test_orbit_cameras_for_val_and_test():
    test = CameraDataset(_cfg(eval_elevations_deg=[0.0, 30.0]), "test")
    batch = test.collate([test[i] for i in range(len(test))])
    assert len(test) == 6 and batch["height"] == 32 and batch["rays_o"].shape == (6, 32, 32, 3)
    torch.testing.assert_close(batch["azimuth"], torch.arange(6) * 60.0)  # evenly spaced, no repeated 360
    torch.testing.assert_close(batch["elevation"], torch.linspace(0, 30, 6))
    rays_o, rays_d = cameras.camera_rays(eval_cameras(_cfg(eval_elevations_deg=[0.0, 30.0]), "test"))
    torch.testing.assert_close(batch["rays_d"], rays_d)
    val = eval_cameras(_cfg(), "val")  # n_val_views at the single default eval elevation
    assert val["azimuth"].tolist() == [0.0, 180.0] and val["elevation"].tolist() == [15.0, 15.0]


def test_random_test_cameras_are_drawn_from_the_training_ranges_and_seeded():
    got = eval_cameras(_cfg(test_cameras="random"), "test")
    want = cameras.random_cameras(6, (-10.0, 45.0), (-180.0, 180.0), (1.5, 2.0), (40.0, 70.0), 32, 32, seed=0)
    for key in ("c2w", "fovy", "elevation", "azimuth", "camera_distances"):
        torch.testing.assert_close(got[key], want[key], msg=key)
    assert got["camera_distances"].unique().numel() == 6  # not the orbit's one distance
    other = eval_cameras(_cfg(test_cameras="random", test_camera_seed=1), "test")
    assert not torch.equal(other["c2w"], got["c2w"])
    assert eval_cameras(_cfg(test_cameras="random"), "val")["camera_distances"].unique().tolist() == [2.0]  # val: orbit
    with pytest.raises(ValueError, match="data.test_cameras must be one of orbit, random"):
        eval_cameras(_cfg(test_cameras="spiral"), "test")


def test_pseudo_views_are_read_at_the_render_size_from_their_stored_cameras(tmp_path):
    torch.manual_seed(0)
    cams = cameras.orbit_cameras(6, [0.0, 30.0], 2.0, 60.0, 48, 48)
    masks = (torch.rand(6, 48, 48, 1) > 0.5).float()
    folder = write_pseudo_views(tmp_path / "set", torch.rand(6, 48, 48, 3), cams, captions="a sks dog", masks=masks)
    views, stored = PseudoViews(str(folder), 32, 32), read_pseudo_views(folder)
    assert len(views) == 6 and views.folder == stored.folder
    one = views.get(3)
    want = cameras.camera_rays(stored.camera_batch(32, 32))
    torch.testing.assert_close(one["rays_d"], want[1][3:4])
    shrunk = F.interpolate(stored.images[3:4].permute(0, 3, 1, 2), (32, 32), mode="area").permute(0, 2, 3, 1)
    torch.testing.assert_close(one["rgb"], shrunk)
    assert one["mask"].shape == (1, 32, 32, 1) and one["index"].tolist() == [3]
    assert one["elevation"].item() == pytest.approx(stored.cameras[3]["elevation_deg"])


def test_resize_hwc_area_shrinks_and_bilinear_grows():
    images = torch.rand(2, 8, 8, 3)
    assert resize_hwc(images, 8, 8) is images
    torch.testing.assert_close(resize_hwc(images, 4, 4), images.reshape(2, 4, 2, 4, 2, 3).mean(dim=(2, 4)))
    assert resize_hwc(images, 16, 12).shape == (2, 16, 12, 3)
