"""Score distillation sampling (SDS) and its variants, exactly as threestudio's stable-diffusion-guidance.

The one place the SDS losses live: the threestudio guidance adapter only wraps
:func:`score_distillation`, and the tests check it on the tiny model. The guided noise
prediction is :mod:`.guidance_math`'s; the VAE passes are :mod:`.vae`'s. Conventions follow
threestudio's ``StableDiffusionGuidance``:

* ``grad = w(t) * (eps_pred - noise)`` with weighting ``sds`` (1 - alpha_bar),
  ``uniform`` (1) or ``fantasia3d`` (sqrt(alpha_bar) * (1 - alpha_bar));
* ``nan_to_num`` then optional clamp to ``[-grad_clip, grad_clip]``;
* ``loss = 0.5 * mse(latents, (latents - grad).detach(), sum) / B``, whose gradient
  w.r.t. ``latents`` is ``grad / B``;
* HiFA's image-space loss (:func:`hifa_image_grad`) and score Jacobian chaining
  (:func:`sjc_grad`), threestudio's ``use_img_loss`` and ``use_sjc``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .guidance_math import add_noise, per_item, guided_noise_pred, sample_timesteps, step_range
from .vae import decode_latents, encode_images

WEIGHTINGS = ("sds", "uniform", "fantasia3d")


@dataclass
class SDSConfig:
    """The knobs of threestudio's guidance config that change the SDS gradient."""

    guidance_scale: float = 100.0
    min_step_percent: float = 0.02
    max_step_percent: float = 0.98
    weighting_strategy: str = "sds"
    grad_clip: Optional[float] = None  # a number; threestudio's schedules are resolved by the caller
    use_img_loss: bool = False  # HiFA image-space SDS: adds loss_sds_img
    use_sjc: bool = False  # score Jacobian chaining instead of SDS
    var_red: bool = True  # SJC's variance reduction (subtract the injected noise)


def check_weighting(name: str) -> None:
    """Fail before any model loads on a weighting :func:`sds_weight` does not know."""
    if name not in WEIGHTINGS:
        raise ValueError(f"system.guidance.weighting_strategy={name!r}: expected one of {', '.join(WEIGHTINGS)}")


def sds_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, weighting: str = "sds") -> torch.Tensor:
    """w(t) of threestudio's ``weighting_strategy``, shaped [B, 1, 1, 1]."""
    ab = per_item(alphas_cumprod, t)
    if weighting == "sds":
        return 1 - ab
    if weighting == "uniform":
        return torch.ones_like(ab)
    if weighting == "fantasia3d":
        return ab.sqrt() * (1 - ab)
    raise ValueError(f"unknown weighting strategy {weighting!r}; expected one of {WEIGHTINGS}")


def _draw_noise(latents: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    if generator is None:
        # threestudio's randn_like: it follows the memory layout of the latents (channels-last
        # after resizing a permuted render), so the same seed gives the same noise only this way
        return torch.randn_like(latents)
    return torch.randn(latents.shape, generator=generator, dtype=latents.dtype, device=generator.device)


def sds_grad(
    unet: Callable,
    latents: torch.Tensor,
    text_embeddings: Union[torch.Tensor, Sequence[torch.Tensor]],
    t: torch.Tensor,
    guidance_scale: float,
    alphas_cumprod: torch.Tensor,
    weighting: str = "sds",
    prediction_type: str = "epsilon",
    grad_clip: Optional[float] = None,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    neg_guidance_weights: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The SDS gradient w.r.t. ``latents`` [B, 4, h, w] at timesteps ``t`` [B].

    ``unet`` is a diffusers ``UNet2DConditionModel`` (or any callable with its
    signature); ``text_embeddings`` is ``cat([cond, uncond])`` [2B, L, D] or a
    ``(cond, uncond)`` pair, or with ``neg_guidance_weights`` [B, K] Perp-Neg's
    ``cat([pos, uncond, neg])`` [(2+K)B, L, D]. ``noise`` (or ``generator``) fixes the
    injected noise. Returns ``(grad, aux)``; ``aux`` holds ``noise``, ``latents_noisy``,
    ``noise_pred`` (guided epsilon), ``latents_denoised`` (one-step x0 estimate), ``w``
    and ``t`` for logging, the HiFA image loss or guidance_eval.
    """
    batch_size = latents.shape[0]
    t = torch.as_tensor(t, device=latents.device, dtype=torch.long).reshape(-1).expand(batch_size)
    alphas_cumprod = alphas_cumprod.to(latents.device)
    w = sds_weight(alphas_cumprod, t, weighting).to(latents.dtype)  # validates the name before any work
    with torch.no_grad():
        if noise is None:
            noise = _draw_noise(latents, generator)
        noise = noise.to(latents)
        latents_noisy = add_noise(latents.detach(), noise, t, alphas_cumprod)
        noise_pred = guided_noise_pred(unet, latents_noisy, t, text_embeddings, guidance_scale, alphas_cumprod,
                                       prediction_type, neg_guidance_weights)
        grad = torch.nan_to_num(w * (noise_pred - noise))
        if grad_clip is not None:
            grad = grad.clamp(-grad_clip, grad_clip)

        ab = per_item(alphas_cumprod, t).to(latents.dtype)
        latents_denoised = (latents_noisy - (1 - ab).sqrt() * noise_pred) / ab.sqrt()
    aux = {"noise": noise, "latents_noisy": latents_noisy, "noise_pred": noise_pred,
           "latents_denoised": latents_denoised, "w": w, "t": t}
    return grad, aux


def sjc_grad(
    unet: Callable,
    latents: torch.Tensor,
    text_embeddings: Union[torch.Tensor, Sequence[torch.Tensor]],
    t: torch.Tensor,
    guidance_scale: float,
    alphas_cumprod: torch.Tensor,
    var_red: bool = True,
    prediction_type: str = "epsilon",
    grad_clip: Optional[float] = None,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    neg_guidance_weights: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Score Jacobian chaining (Wang et al. 2023) as threestudio's ``compute_grad_sjc``.

    In SJC's variance-exploding parametrisation ``sigma = sqrt((1 - a) / a)``:
    ``z = y + sigma * noise``, the UNet sees ``z / sqrt(1 + sigma^2)``, the denoised
    ``D = z - sigma * eps`` and ``grad = -(D - y) / sigma`` (``var_red``, which equals
    ``eps - noise``) or ``-(D - z) / sigma`` (``= eps``). No SDS weighting applies.
    """
    batch_size = latents.shape[0]
    t = torch.as_tensor(t, device=latents.device, dtype=torch.long).reshape(-1).expand(batch_size)
    alphas_cumprod = alphas_cumprod.to(latents.device)
    with torch.no_grad():
        if noise is None:
            noise = _draw_noise(latents, generator)
        noise = noise.to(latents)
        ab = per_item(alphas_cumprod, t)
        sigma = ((1 - ab) / ab).sqrt().to(latents.dtype)
        y = latents.detach()
        zs = y + sigma * noise
        scaled_zs = zs / torch.sqrt(1 + sigma ** 2)
        noise_pred = guided_noise_pred(unet, scaled_zs, t, text_embeddings, guidance_scale, alphas_cumprod,
                                       prediction_type, neg_guidance_weights)
        denoised = zs - sigma * noise_pred
        grad = -(denoised - y) / sigma if var_red else -(denoised - zs) / sigma
        grad = torch.nan_to_num(grad)
        if grad_clip is not None:
            grad = grad.clamp(-grad_clip, grad_clip)
    aux = {"noise": noise, "latents_noisy": scaled_zs, "noise_pred": noise_pred, "t": t}
    return grad, aux


def hifa_image_grad(image: torch.Tensor, image_denoised: torch.Tensor, w: Union[torch.Tensor, float],
                    alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """HiFA's image-space SDS gradient (Zhu et al. 2023), threestudio's ``use_img_loss``:
    ``w(t) * (image - decode(x0_hat)) * sqrt(a) / sqrt(1 - a)``, before nan_to_num/clipping."""
    ab = per_item(alphas_cumprod.to(image.device), t).to(image.dtype)
    return w * (image - image_denoised) * ab.sqrt() / (1 - ab).sqrt()


def sds_loss(latents: torch.Tensor, grad: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """threestudio's reparameterised SDS loss: d(loss)/d(latents) = grad / batch_size."""
    batch_size = latents.shape[0] if batch_size is None else batch_size
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / batch_size


def score_distillation(
    components: Any,
    rgb: torch.Tensor,
    text_embeddings: Union[torch.Tensor, Sequence[torch.Tensor]],
    cfg: Optional[SDSConfig] = None,
    rgb_as_latents: bool = False,
    t: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    neg_guidance_weights: Optional[torch.Tensor] = None,
    steps: Optional[Tuple[int, int]] = None,
) -> Dict[str, Any]:
    """One SDS evaluation as threestudio's guidance ``__call__`` does it.

    ``components`` is an :class:`~threestudio_dreambooth3d.core.sd_models.SDComponents`
    (base model plus any DreamBooth weights); ``rgb`` is [B, H, W, C] as threestudio
    renderers give it: colours in [0, 1] (upsampled to the model resolution and
    encoded) or, with ``rgb_as_latents``, 4 latent channels (resized to the latent
    size). ``neg_guidance_weights`` switches to Perp-Neg (see :func:`perp_neg_guidance`).
    ``steps`` = ``(min_step, max_step)`` overrides the range from ``cfg``'s percentages
    (threestudio's guidance keeps integer steps; ``t`` is drawn after encoding, as there).
    Returns threestudio's keys ``loss_sds`` (and ``loss_sds_img`` with ``use_img_loss``),
    ``grad_norm``, ``min_step``, ``max_step`` plus ``latents``, ``grad`` and the
    :func:`sds_grad` aux.
    """
    cfg = cfg or SDSConfig()
    if cfg.use_img_loss and rgb_as_latents:
        raise ValueError("use_img_loss (HiFA's image-space loss) needs RGB renders; it cannot be used with "
                         "rgb_as_latents (Latent-NeRF): set guidance.use_img_loss=false")
    batch_size = rgb.shape[0]
    rgb_bchw = rgb.permute(0, 3, 1, 2)
    image = None
    if rgb_as_latents:
        size = int(components.unet.config.sample_size)
        latents = F.interpolate(rgb_bchw, (size, size), mode="bilinear", align_corners=False)
    else:
        image = rgb_bchw
        res = components.resolution
        if tuple(image.shape[-2:]) != (res, res):
            image = F.interpolate(image, (res, res), mode="bilinear", align_corners=False)
        latents = encode_images(components.vae, image, generator=generator)

    scheduler = components.scheduler
    if steps is None:
        min_step, max_step = step_range(scheduler.config.num_train_timesteps, cfg.min_step_percent, cfg.max_step_percent)
    else:
        min_step, max_step = steps
    if t is None:
        t = sample_timesteps(batch_size, min_step, max_step, generator=generator, device=latents.device)
    common = dict(prediction_type=components.prediction_type, grad_clip=cfg.grad_clip, generator=generator,
                  neg_guidance_weights=neg_guidance_weights)
    if cfg.use_sjc:
        grad, aux = sjc_grad(components.unet, latents, text_embeddings, t, cfg.guidance_scale,
                             scheduler.alphas_cumprod, var_red=cfg.var_red, **common)
    else:
        grad, aux = sds_grad(components.unet, latents, text_embeddings, t, cfg.guidance_scale,
                             scheduler.alphas_cumprod, weighting=cfg.weighting_strategy, **common)
    out = {"loss_sds": sds_loss(latents, grad, batch_size), "grad_norm": grad.norm(), "min_step": min_step,
           "max_step": max_step, "latents": latents, "grad": grad, **aux}
    if cfg.use_img_loss:
        if cfg.use_sjc:
            # threestudio's SJC path has no image gradient: its loss_sds_img is 0
            grad_img = torch.zeros_like(image)
        else:
            with torch.no_grad():
                image_denoised = decode_latents(components.vae, aux["latents_denoised"])
                grad_img = hifa_image_grad(image, image_denoised, aux["w"], scheduler.alphas_cumprod, aux["t"])
        grad_img = torch.nan_to_num(grad_img)
        if cfg.grad_clip is not None:
            grad_img = grad_img.clamp(-cfg.grad_clip, cfg.grad_clip)
        out["loss_sds_img"] = sds_loss(image, grad_img, batch_size)
        out["grad_img"] = grad_img
    return out
