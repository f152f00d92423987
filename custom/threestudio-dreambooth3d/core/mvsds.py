"""Multi-view score distillation with MVDream, as MVDream-threestudio's ``multiview-diffusion-guidance``.

The math of ``dreambooth-mvdream-guidance`` (and of the multi-view half of the mixed
guidance), threestudio-free. A batch holds whole objects: ``B = n_objects * n_view``
renders, the views of one object next to each other (what the multi-view camera
datamodule yields), each with its camera-to-world matrix. Conventions of the original:

* one timestep per object, shared by its ``n_view`` views (the original draws a single
  ``t`` for the whole batch, i.e. one object: the same random draw);
* the UNet runs on ``cat([x_t] * 2)`` with threestudio's ``cat([cond, uncond])`` text
  embeddings, the cameras repeated for both halves and ``num_frames = n_view``, so the
  multi-view attention sees one object's views at a time;
* classifier-free guidance from the *unconditional* prediction:
  ``eps = eps_u + s (eps_c - eps_u)`` (MVDream's scale 50; threestudio's SD guidance
  starts from ``eps_c`` instead);
* ``recon_loss`` (the default, MVDream Sec. 3.2): the one-step x0 estimate
  ``x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)``, optionally std-rescaled towards the
  unguided estimate ``x0_c`` (``factor = std(x0_c) / std(x0)`` over each object's views,
  ``x0 <- r * factor * x0 + (1 - r) * x0``), and ``loss = 0.5 ||x - sg(x0)||^2 / B``;
* otherwise SDS: ``grad = (1 - a) (eps - noise)``, clamped to ``grad_clip`` then
  ``nan_to_num``, ``loss = 0.5 ||x - sg(x - grad)||^2 / B``.

Both losses have the gradient ``(x - target) / B`` w.r.t. the latents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .guidance_math import add_noise, autocast_off, per_item, sample_timesteps, to_epsilon
from .vae import encode_images


@dataclass
class MVSDSConfig:
    """The keys of MVDream-threestudio's guidance config that change the gradient."""

    guidance_scale: float = 50.0
    n_view: int = 4
    recon_loss: bool = True  # x0-reconstruction loss instead of SDS
    recon_std_rescale: float = 0.5  # 0: plain CFG x0; 1: fully rescaled to the unguided std
    grad_clip: Optional[float] = None  # SDS variant only, as the original


def check_views(batch_size: int, n_view: int) -> int:
    """The number of objects in a batch of ``batch_size`` renders."""
    if n_view < 1 or batch_size % n_view:
        raise ValueError(f"a multi-view batch holds whole objects: batch size {batch_size} is not a multiple of "
                         f"n_view={n_view} (set data.batch_size to a multiple of data.n_view)")
    return batch_size // n_view


def object_timesteps(batch_size: int, n_view: int, min_step: int, max_step: int,
                     generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """``[B]`` timesteps, one uniform draw on ``[min_step, max_step]`` per object, repeated for its views."""
    n_objects = check_views(batch_size, n_view)
    t = sample_timesteps(n_objects, min_step, max_step, generator=generator, device=device)
    return t.repeat_interleave(n_view)


def predict_x0(latents_noisy: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
               alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The one-step clean-latent estimate from a noise prediction (DDPM's predict_start_from_noise)."""
    ab = per_item(alphas_cumprod.to(latents_noisy.device), t).to(latents_noisy.dtype)
    return (latents_noisy - (1 - ab).sqrt() * eps) / ab.sqrt()


def rescale_x0(x0: torch.Tensor, x0_cond: torch.Tensor, n_view: int, rescale: float) -> torch.Tensor:
    """MVDream's std rescaling of the guided x0 towards the unguided one's std, per object.

    High CFG scales blow up x0's magnitude; the factor ``std(x0_cond) / std(x0)`` is
    taken over all views, channels and pixels of one object.
    """
    if rescale <= 0:
        return x0
    n_objects = check_views(x0.shape[0], n_view)

    def std(x):
        return x.reshape(n_objects, -1).std(dim=1)

    factor = (std(x0_cond) + 1e-8) / (std(x0) + 1e-8)
    factor = factor.repeat_interleave(n_view).view(-1, *([1] * (x0.dim() - 1)))
    return rescale * (x0 * factor) + (1 - rescale) * x0


def multiview_noise_pred(unet: Callable, latents_noisy: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor,
                         camera: Optional[torch.Tensor], n_view: int, alphas_cumprod: torch.Tensor,
                         prediction_type: str = "epsilon") -> Tuple[torch.Tensor, torch.Tensor]:
    """``(eps_cond, eps_uncond)``: one UNet pass on the doubled batch (no grad).

    ``text_embeddings`` is ``cat([cond, uncond])`` [2B, L, D]; ``camera`` [B, 16] (MVDream's
    flattened camera) or None for the 2D mode (then ``num_frames`` is 1).
    """
    batch_size = latents_noisy.shape[0]
    if text_embeddings.shape[0] != 2 * batch_size:
        raise ValueError(f"text_embeddings must be cat([cond, uncond]) with 2*B = {2 * batch_size} rows "
                         f"(threestudio's prompt_utils.get_text_embeddings), got {text_embeddings.shape[0]}")
    x_in = torch.cat([latents_noisy] * 2)
    t_in = torch.cat([t] * 2)
    dtype = getattr(unet, "dtype", x_in.dtype)
    kwargs: Dict[str, Any] = {"num_frames": 1}
    if camera is not None:
        kwargs = {"camera": torch.cat([camera] * 2).to(x_in.device, dtype), "num_frames": n_view}
    with torch.no_grad(), autocast_off(x_in.device):
        out = unet(x_in.to(dtype), t_in, encoder_hidden_states=text_embeddings.to(x_in.device, dtype), **kwargs)
    out = getattr(out, "sample", out).to(x_in.dtype)
    eps = to_epsilon(out, x_in, t_in, alphas_cumprod.to(x_in.device), prediction_type)
    eps_cond, eps_uncond = eps.chunk(2)
    return eps_cond, eps_uncond


def multiview_sds_grad(unet: Callable, latents: torch.Tensor, text_embeddings: torch.Tensor,
                       camera: Optional[torch.Tensor], t: torch.Tensor, alphas_cumprod: torch.Tensor,
                       cfg: Optional[MVSDSConfig] = None, noise: Optional[torch.Tensor] = None,
                       prediction_type: str = "epsilon") -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """``(target, grad, aux)`` for latents [B, 4, h, w] at per-view timesteps ``t`` [B].

    ``target`` is what the loss pulls the latents towards (detached); ``grad`` is what the
    original logs (the recon variant's is the loss gradient, ``(x - target) / B``; the SDS
    variant's is ``w (eps - noise)`` before the ``/ B``).
    """
    cfg = cfg or MVSDSConfig()
    check_views(latents.shape[0], cfg.n_view)
    alphas_cumprod = alphas_cumprod.to(latents.device)
    t = t.to(latents.device)
    with torch.no_grad():
        noise = torch.randn_like(latents) if noise is None else noise.to(latents)
        latents_noisy = add_noise(latents.detach(), noise, t, alphas_cumprod)
        eps_cond, eps_uncond = multiview_noise_pred(unet, latents_noisy, t, text_embeddings, camera, cfg.n_view,
                                                    alphas_cumprod, prediction_type)
        eps = eps_uncond + cfg.guidance_scale * (eps_cond - eps_uncond)
        if cfg.recon_loss:
            x0 = predict_x0(latents_noisy, t, eps, alphas_cumprod)
            if cfg.recon_std_rescale > 0:
                x0_cond = predict_x0(latents_noisy, t, eps_cond, alphas_cumprod)
                x0 = rescale_x0(x0, x0_cond, cfg.n_view, cfg.recon_std_rescale)
            target = x0
            grad = (latents.detach() - target) / latents.shape[0]
        else:
            grad = per_item(1 - alphas_cumprod, t).to(latents.dtype) * (eps - noise)
            if cfg.grad_clip is not None:
                grad = grad.clamp(-cfg.grad_clip, cfg.grad_clip)
            grad = torch.nan_to_num(grad)
            target = latents.detach() - grad
    aux = {"noise": noise, "latents_noisy": latents_noisy, "noise_pred": eps, "t": t}
    return target, grad, aux


def multiview_score_distillation(
    unet: Callable,
    vae: Any,
    rgb: torch.Tensor,
    text_embeddings: torch.Tensor,
    camera: Optional[torch.Tensor],
    alphas_cumprod: torch.Tensor,
    steps: Tuple[int, int],
    cfg: Optional[MVSDSConfig] = None,
    image_size: int = 256,
    rgb_as_latents: bool = False,
    t: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    prediction_type: str = "epsilon",
) -> Dict[str, Any]:
    """One multi-view SDS evaluation as the original guidance's ``forward``.

    ``rgb`` [B, H, W, 3] in [0, 1] (resized to ``image_size`` and encoded) or, with
    ``rgb_as_latents``, 4 latent channels (resized to ``image_size / 8``). ``t`` is drawn
    after encoding (one per object), then the noise, as in the original. Returns
    ``loss_sds`` and ``grad_norm`` (threestudio's keys) plus ``latents``, ``target``,
    ``grad`` and the aux of :func:`multiview_sds_grad`.
    """
    cfg = cfg or MVSDSConfig()
    batch_size = rgb.shape[0]
    check_views(batch_size, cfg.n_view)
    rgb_bchw = rgb.permute(0, 3, 1, 2)
    if rgb_as_latents:
        size = image_size // 8
        latents = F.interpolate(rgb_bchw, (size, size), mode="bilinear", align_corners=False)
    else:
        latents = encode_images(vae, rgb_bchw, resolution=image_size)
    if t is None:
        t = object_timesteps(batch_size, cfg.n_view, steps[0], steps[1], device=latents.device)
    target, grad, aux = multiview_sds_grad(unet, latents, text_embeddings, camera, t, alphas_cumprod, cfg,
                                           noise=noise, prediction_type=prediction_type)
    loss = 0.5 * F.mse_loss(latents, target, reduction="sum") / batch_size
    return {"loss_sds": loss, "grad_norm": grad.norm(), "latents": latents, "target": target, "grad": grad, **aux}


def mix_guidance_outputs(outputs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Several guidances' outputs as one, each key suffixed with its guidance's name.

    ``{"2d": {"loss_sds": a, ...}, "mv": {"loss_sds": b, ...}}`` -> ``{"loss_sds_2d": a,
    "loss_sds_mv": b, ...}``: threestudio's systems weigh every ``loss_X`` by
    ``system.loss.lambda_X``, so each prior gets its own weight (and schedule).
    """
    mixed: Dict[str, Any] = {}
    for name, out in outputs.items():
        for key, value in out.items():
            mixed[f"{key}_{name}"] = value
    return mixed
