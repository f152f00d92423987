"""What ``dreambooth3d-system`` computes (core/stages.py), on plain tensors: stage 3's
reconstruction losses and their weighting, the system's checks."""
from __future__ import annotations


import pytest
import torch

from threestudio_dreambooth3d.core import stages


def _ring_scene():
    """A render that matches its pseudo view on the mask grown by one pixel and differs outside it."""
    render = torch.zeros(1, 8, 8, 3)
    mask = torch.zeros(1, 8, 8, 1)
    mask[:, 2:5, 2:5] = 1.0
    target = torch.ones(1, 8, 8, 3)
    target[:, 1:6, 1:6] = 0.0
    return render, torch.full((1, 8, 8, 1), 0.5), target, mask


def test_stage3_reconstruction_is_weighted_by_the_dilated_pseudo_view_mask():
    render, opacity, target, mask = _ring_scene()
    rec = stages.reconstruction_losses(render, opacity, target, mask, mask_weighting=True, dilation=1)
    assert rec["loss_rec"].item() == 0.0  # the background, where they differ, is ignored
    ring = 7 * 7 - 5 * 5  # grown by two: the differing ring counts, the rest of the background not
    rec = stages.reconstruction_losses(render, opacity, target, mask, mask_weighting=True, dilation=2)
    assert rec["loss_rec"].item() == pytest.approx(ring / 49, rel=1e-5)
    plain = stages.reconstruction_losses(render, opacity, target, mask, mask_weighting=False)
    assert plain["loss_rec"].item() == pytest.approx((64 - 25) / 64, rel=1e-5)  # every pixel
    with pytest.raises(ValueError, match="rec_mask_weighting"):
        stages.reconstruction_losses(render, opacity, target, None, mask_weighting=True)
    assert set(stages.reconstruction_losses(render, opacity, target, None, mask_weighting=False)) == {"loss_rec"}


def test_the_mask_loss_is_threestudios_bce_of_the_opacity_against_the_mask():
    render, _, target, mask = _ring_scene()
    opacity = torch.rand(1, 8, 8, 1)
    opacity[0, 0, 0] = 0.0  # clamped: the log stays finite
    got = stages.reconstruction_losses(render, opacity, target, mask)["loss_rec_mask"]
    p = opacity.clamp(1e-3, 1 - 1e-3)
    by_hand = -(mask * torch.log(p) + (1 - mask) * torch.log(1 - p)).mean()
    torch.testing.assert_close(got, by_hand)
    assert torch.isfinite(got)


def test_reconstruction_weights_scale_each_loss_and_need_pseudo_views():
    losses = {"loss_rec": torch.tensor(2.0), "loss_rec_mask": torch.tensor(3.0)}
    weights = {"lambda_rec": 10.0, "lambda_rec_mask": 0.5}
    assert stages.add_weighted(torch.tensor(1.0), losses, weights).item() == 1.0 + 20.0 + 1.5
    assert not stages.reconstruction_active({"lambda_rec": 0.0, "lambda_rec_mask": 0.0}, has_pseudo_views=False)
    assert stages.reconstruction_active({"lambda_rec": 0.0, "lambda_rec_mask": 0.1}, has_pseudo_views=True)
    with pytest.raises(ValueError, match="data.pseudo_views_dir"):
        stages.reconstruction_active({"lambda_rec": 1000.0, "lambda_rec_mask": 0.0}, has_pseudo_views=False)


def test_system_settings_are_checked_before_anything_loads():
    stages.check_system_config(3, 0, "albedo")
    with pytest.raises(ValueError, match="system.stage must be 1, 2 or 3"):
        stages.check_system_config(4, 2, "diffuse")
    with pytest.raises(ValueError, match="rec_mask_dilation must be >= 0"):
        stages.check_system_config(3, -1, "diffuse")
    with pytest.raises(ValueError, match="pseudo_view_shading must be albedo or diffuse"):
        stages.check_system_config(3, 2, "lambertian")


def test_masked_mse_ignores_the_background():
    render = torch.zeros(1, 4, 4, 3)
    target = torch.zeros(1, 4, 4, 3)
    target[0, :, 2:] = 1.0  # the pseudo view differs from the render only in the background
    mask = torch.zeros(1, 4, 4, 1)
    mask[0, :, :2] = 1.0
    assert stages.masked_mse(render, target, mask).item() == 0.0
    assert torch.nn.functional.mse_loss(render, target).item() == 0.5
    # inside the mask: the mean squared error over the masked pixels, whatever the mask's size
    target[0, 0, 0] = 1.0
    assert stages.masked_mse(render, target, mask).item() == pytest.approx(1 / 8, rel=1e-5)
    # soft weights weight pixels; an empty mask gives 0, not NaN
    assert stages.masked_mse(render, target, mask * 0.5).item() == pytest.approx(1 / 8, rel=1e-5)
    assert stages.masked_mse(render, target, torch.zeros_like(mask)).item() == 0.0


def test_dilate_mask_grows_by_whole_pixels():
    mask = torch.zeros(1, 7, 7, 1)
    mask[0, 3, 3] = 0.8
    assert torch.equal(stages.dilate_mask(mask, 0), mask)
    grown = stages.dilate_mask(mask, 2)
    assert grown.shape == mask.shape
    assert torch.equal(grown[0, 1:6, 1:6, 0], torch.full((5, 5), 0.8)) and grown.sum().item() == pytest.approx(25 * 0.8)
