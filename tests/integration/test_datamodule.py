"""pseudo-multiview-datamodule: threestudio's random cameras + one pseudo view per step; orbit val/test."""
import random

import pytest
import torch

TINY = dict(width=32, height=32, eval_height=32, eval_width=32, camera_distance_range=[1.5, 2.0], fovy_range=[40, 70],
            elevation_range=[-10, 45], eval_camera_distance=2.0, eval_fovy_deg=70.0, n_val_views=2, n_test_views=6)


@pytest.fixture(scope="module")
def pseudo_set(tmp_path_factory):
    """Six 48px pseudo views (random colours, masks) at orbit cameras: larger than the 32px renders."""
    from threestudio_dreambooth3d.core import cameras
    from threestudio_dreambooth3d.core.pseudo_views import write_pseudo_views

    torch.manual_seed(0)
    cams = cameras.orbit_cameras(6, [0.0, 30.0], 2.0, 60.0, 48, 48)
    images = torch.rand(6, 48, 48, 3)
    masks = (torch.rand(6, 48, 48, 1) > 0.5).float()
    return write_pseudo_views(tmp_path_factory.mktemp("pseudo") / "set", images, cams, captions="a sks dog", masks=masks)


def first_train_batch(dm):
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_training_cameras_are_threestudios_random_cameras(threestudio, pseudo_set):
    from threestudio.data.uncond import RandomCameraDataModule

    ours = threestudio.find("pseudo-multiview-datamodule")({**TINY, "pseudo_views_dir": str(pseudo_set)})
    stock = RandomCameraDataModule(TINY)
    random.seed(0)
    torch.manual_seed(0)
    a = first_train_batch(ours)
    # the pseudo view is drawn with `random` after threestudio's draws: reseed the same way
    random.seed(0)
    torch.manual_seed(0)
    b = first_train_batch(stock)
    assert set(a) - set(b) == {"pseudo"} and set(b) <= set(a)
    for k, v in b.items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(a[k], v, rtol=0, atol=0, msg=k)
        else:
            assert a[k] == v, k


def test_pseudo_view_rays_colours_and_mask_come_from_the_stored_camera(threestudio, pseudo_set):
    import torch.nn.functional as F

    from threestudio.utils.ops import get_ray_directions, get_rays
    from threestudio_dreambooth3d.core.pseudo_views import read_pseudo_views

    dm = threestudio.find("pseudo-multiview-datamodule")({**TINY, "pseudo_views_dir": str(pseudo_set)})
    dm.setup("fit")
    stored = read_pseudo_views(pseudo_set)
    pv = dm.train_dataset.pseudo_views
    assert len(pv) == 6
    for i in (0, 3):
        p = pv.get(i)
        rec = stored.cameras[i]
        c2w = torch.tensor(rec["c2w"])
        # rays through threestudio's own helpers for the stored c2w/fovy at the 32px render size
        focal = 0.5 * 32 / torch.tan(torch.deg2rad(torch.tensor(rec["fovy_deg"])) / 2)
        dirs = get_ray_directions(32, 32, 1.0)
        dirs[..., :2] = dirs[..., :2] / focal
        rays_o, rays_d = get_rays(dirs, c2w[None], keepdim=True, normalize=True)
        torch.testing.assert_close(p["rays_o"], rays_o, atol=1e-5, rtol=0)
        torch.testing.assert_close(p["rays_d"], rays_d, atol=1e-5, rtol=0)
        # colours and mask: the stored image, area-shrunk 48 -> 32
        img = F.interpolate(stored.images[i : i + 1].permute(0, 3, 1, 2), (32, 32), mode="area").permute(0, 2, 3, 1)
        torch.testing.assert_close(p["rgb"], img)
        assert p["mask"].shape == (1, 32, 32, 1)
        torch.testing.assert_close(p["light_positions"][0], c2w[:3, 3])
        assert p["elevation"].item() == pytest.approx(rec["elevation_deg"])
        assert p["azimuth"].item() == pytest.approx(rec["azimuth_deg"])
    # one pseudo view per step, chosen at random
    it = iter(dm.train_dataloader())
    seen = {int(next(it)["pseudo"]["index"]) for _ in range(30)}
    assert len(seen) > 3


def test_orbit_cameras_for_val_and_test(threestudio):
    from threestudio.utils.ops import get_ray_directions, get_rays

    dm = threestudio.find("pseudo-multiview-datamodule")({**TINY, "eval_elevations_deg": [0.0, 30.0]})
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert len(batches) == 6
    az = torch.cat([b["azimuth"] for b in batches])
    el = torch.cat([b["elevation"] for b in batches])
    torch.testing.assert_close(az, torch.arange(6) * 60.0)  # evenly spaced, no repeated 360
    torch.testing.assert_close(el, torch.linspace(0, 30, 6))
    b = batches[4]
    assert b["rays_o"].shape == (1, 32, 32, 3) and b["height"] == 32
    focal = 0.5 * 32 / torch.tan(b["fovy"] / 2)
    dirs = get_ray_directions(32, 32, 1.0)
    dirs[..., :2] = dirs[..., :2] / focal
    rays_o, rays_d = get_rays(dirs, b["c2w"], keepdim=True, normalize=True)
    torch.testing.assert_close(b["rays_d"], rays_d, atol=1e-5, rtol=0)
    torch.testing.assert_close(b["camera_distances"], torch.tensor([2.0]))
    # val: n_val_views, at the single default eval elevation
    dm = threestudio.find("pseudo-multiview-datamodule")(TINY)
    dm.setup("validate")
    val = list(dm.val_dataloader())
    assert [float(v["azimuth"]) for v in val] == [0.0, 180.0]
    assert all(float(v["elevation"]) == 15.0 for v in val)


def test_missing_pseudo_view_set_names_the_folder(threestudio, tmp_path):
    dm = threestudio.find("pseudo-multiview-datamodule")({**TINY, "pseudo_views_dir": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        dm.setup("fit")


def test_random_test_cameras_are_drawn_from_the_training_ranges_and_seeded(threestudio):
    from threestudio_dreambooth3d.core import cameras

    def test_batches(**kw):
        dm = threestudio.find("pseudo-multiview-datamodule")({**TINY, "test_cameras": "random", **kw})
        dm.setup("test")
        return list(dm.test_dataloader())

    batches = test_batches()
    assert len(batches) == 6 and batches[0]["height"] == 32
    expected = cameras.random_cameras(6, (-10.0, 45.0), (-180.0, 180.0), (1.5, 2.0), (40.0, 70.0), 32, 32, seed=0)
    for key in ("c2w", "fovy", "elevation", "azimuth", "camera_distances"):
        torch.testing.assert_close(torch.cat([b[key] for b in batches]), expected[key], msg=key)
    assert torch.cat([b["camera_distances"] for b in batches]).unique().numel() == 6  # not the orbit's one distance
    # the same seed reproduces them, another seed moves them
    again = test_batches()
    assert all(torch.equal(a["c2w"], b["c2w"]) for a, b in zip(batches, again))
    other = test_batches(test_camera_seed=1)
    assert not torch.equal(torch.cat([b["c2w"] for b in other]), expected["c2w"])
    # rays through threestudio's helpers for each drawn camera
    from threestudio.utils.ops import get_ray_directions, get_rays

    b = batches[3]
    dirs = get_ray_directions(32, 32, 1.0)
    dirs[..., :2] = dirs[..., :2] / (0.5 * 32 / torch.tan(b["fovy"] / 2))
    _, rays_d = get_rays(dirs, b["c2w"], keepdim=True, normalize=True)
    torch.testing.assert_close(b["rays_d"], rays_d, atol=1e-5, rtol=0)


def test_unknown_test_cameras_kind_is_named(threestudio):
    with pytest.raises(ValueError, match="data.test_cameras must be one of orbit, random"):
        threestudio.find("pseudo-multiview-datamodule")({**TINY, "test_cameras": "spiral"})
