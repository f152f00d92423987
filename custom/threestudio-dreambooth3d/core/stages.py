"""What ``dreambooth3d-system`` computes, without threestudio: its settings' checks and stage 3's
reconstruction losses and their weighting (stage 2's translation prompts: :mod:`.translation`).

The threestudio system (systems/dreambooth3d_system.py) renders, reads its ``C()`` weights
and calls these; the tests check them on plain tensors.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F


STAGES = (1, 2, 3)
PSEUDO_VIEW_SHADINGS = ("albedo", "diffuse")
# stage 3's losses and the system.loss weight of each
RECONSTRUCTION_WEIGHTS = {"loss_rec": "lambda_rec", "loss_rec_mask": "lambda_rec_mask"}
# the opacity is kept off 0 and 1 so the BCE's logs stay finite
OPACITY_EPS = 1.0e-3


def check_system_config(stage: int, rec_mask_dilation: int, pseudo_view_shading: str) -> None:
    """The system's own keys, checked before any model loads."""
    if stage not in STAGES:
        raise ValueError(f"system.stage must be 1, 2 or 3, not {stage}")
    if rec_mask_dilation < 0:
        raise ValueError(f"system.rec_mask_dilation must be >= 0 pixels, not {rec_mask_dilation}")
    if pseudo_view_shading not in PSEUDO_VIEW_SHADINGS:
        raise ValueError(f"system.pseudo_view_shading must be albedo or diffuse, not {pseudo_view_shading!r}")


# ----------------------------------------------------------------------------- stage 3


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow a soft mask [B, H, W, 1] by ``pixels`` (a (2p+1)^2 max filter); 0 returns it unchanged."""
    if pixels <= 0:
        return mask
    x = mask.permute(0, 3, 1, 2)
    x = F.max_pool2d(x, 2 * pixels + 1, stride=1, padding=pixels)
    return x.permute(0, 2, 3, 1)


def masked_mse(render: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean squared error over the pixels ``weight`` [B, H, W, 1] selects (weighted mean).

    Normalised by the mask's area, so the loss scale (and a ``lambda_rec`` tuned for the
    plain MSE) does not shrink with the subject's size; an empty mask gives 0.
    """
    weight = weight.to(render).expand_as(render)
    return ((render - target) ** 2 * weight).sum() / (weight.sum() + eps)


def binary_cross_entropy(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE written out as threestudio's ``utils.ops.binary_cross_entropy`` (stable under
    mixed precision, unlike ``F.binary_cross_entropy``)."""
    return -(target * torch.log(prob) + (1 - target) * torch.log(1 - prob)).mean()


def reconstruction_losses(rgb: torch.Tensor, opacity: torch.Tensor, target_rgb: torch.Tensor,
                          mask: Optional[torch.Tensor] = None, mask_weighting: bool = True,
                          dilation: int = 2) -> Dict[str, torch.Tensor]:
    """Stage 3's losses between a render at a pseudo view's camera and that pseudo view.

    ``rgb`` [B, H, W, 3] and ``opacity`` [B, H, W, 1] are the render; ``mask`` [B, H, W, 1] is
    the pseudo view's (stage 1's opacity), when the set has masks. ``loss_rec``: the MSE, over
    the mask grown by ``dilation`` pixels when ``mask_weighting`` (the background is ignored),
    else over every pixel. ``loss_rec_mask`` (with a mask): BCE of the opacity against it.
    """
    if mask_weighting:
        if mask is None:
            raise ValueError("system.rec_mask_weighting needs pseudo views with masks: rerun stage 2, "
                             "or set system.rec_mask_weighting=false")
        losses = {"loss_rec": masked_mse(rgb, target_rgb, dilate_mask(mask, dilation))}
    else:
        losses = {"loss_rec": F.mse_loss(rgb, target_rgb)}
    if mask is not None:
        prob = opacity.clamp(OPACITY_EPS, 1.0 - OPACITY_EPS)
        losses["loss_rec_mask"] = binary_cross_entropy(prob, mask.clamp(0.0, 1.0))
    return losses


def reconstruction_active(weights: Mapping[str, float], has_pseudo_views: bool) -> bool:
    """Whether this step reconstructs: some weight of :data:`RECONSTRUCTION_WEIGHTS` is > 0 (a
    schedule may still be at 0). A positive weight without pseudo views is an error."""
    if not any(w > 0 for w in weights.values()):
        return False
    if not has_pseudo_views:
        raise ValueError(
            "system.loss.lambda_rec > 0 needs pseudo views: set data.pseudo_views_dir to the folder stage 2 wrote"
        )
    return True


def add_weighted(loss: torch.Tensor, losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``loss`` plus each of ``losses`` times its weight (``weights`` keyed by the loss's
    ``lambda_`` name, :data:`RECONSTRUCTION_WEIGHTS`)."""
    for name, value in losses.items():
        loss = loss + value * weights[RECONSTRUCTION_WEIGHTS[name]]
    return loss
