"""Score distillation sampling (SDS), exactly as threestudio's stable-diffusion-guidance.

The one place the SDS math lives: the threestudio guidance adapter only wraps
:func:`score_distillation`, and the tests check it on the tiny model. Conventions
follow threestudio's ``StableDiffusionGuidance``:

* ``t ~ U{min_step, ..., max_step}`` with ``min_step = int(T * min_step_percent)``;
* classifier-free guidance ``eps = eps_text + scale * (eps_text - eps_uncond)``
  (so threestudio's scale 100 is diffusers' 101), text embeddings in threestudio's
  ``cat([cond, uncond])`` order;
* ``grad = w(t) * (eps_pred - noise)`` with weighting ``sds`` (1 - alpha_bar),
  ``uniform`` (1) or ``fantasia3d`` (sqrt(alpha_bar) * (1 - alpha_bar));
* ``nan_to_num`` then optional clamp to ``[-grad_clip, grad_clip]``;
* ``loss = 0.5 * mse(latents, (latents - grad).detach(), sum) / B``, whose gradient
  w.r.t. ``latents`` is ``grad / B``.

Unlike threestudio, v-prediction models (SD 2.x at 768 px) are supported by turning
the model output into epsilon before guidance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

WEIGHTINGS = ("sds", "uniform", "fantasia3d")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class SDSConfig:
    """The knobs of threestudio's guidance config that change the SDS gradient."""

    guidance_scale: float = 100.0
    min_step_percent: float = 0.02
    max_step_percent: float = 0.98
    weighting_strategy: str = "sds"
    grad_clip: Optional[float] = None  # a number; threestudio's schedules are resolved by the caller


def step_range(num_train_timesteps: int, min_step_percent: float, max_step_percent: float) -> Tuple[int, int]:
    """``(min_step, max_step)`` as threestudio's ``set_min_max_steps``: truncation, not rounding."""
    if not 0.0 <= min_step_percent <= max_step_percent <= 1.0:
        raise ValueError(
            f"need 0 <= min_step_percent <= max_step_percent <= 1, got {min_step_percent}, {max_step_percent}"
        )
    return int(num_train_timesteps * min_step_percent), int(num_train_timesteps * max_step_percent)


def sample_timesteps(batch_size: int, min_step: int, max_step: int, generator: Optional[torch.Generator] = None,
                     device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """One timestep per batch item, uniform on ``[min_step, max_step]`` inclusive."""
    gen_device = generator.device if generator is not None else "cpu"
    t = torch.randint(min_step, max_step + 1, (batch_size,), generator=generator, device=gen_device, dtype=torch.long)
    return t.to(device) if device is not None else t


def _per_item(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return values.to(t.device)[t].view(-1, 1, 1, 1)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward diffusion ``sqrt(a_t) x + sqrt(1 - a_t) eps`` (what ``scheduler.add_noise`` does)."""
    a = _per_item(alphas_cumprod, t).to(latents.dtype)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def to_epsilon(model_output: torch.Tensor, latents_noisy: torch.Tensor, t: torch.Tensor,
               alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
    """Convert a UNet output of any diffusers ``prediction_type`` into a noise prediction.

    With ``x_t = a x0 + s eps`` (a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar)):
    ``v = a eps - s x0`` gives ``eps = a v + s x_t``; an ``x0`` prediction gives
    ``eps = (x_t - a x0) / s``.
    """
    if prediction_type == "epsilon":
        return model_output
    ab = _per_item(alphas_cumprod, t).to(model_output.dtype)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    if prediction_type == "v_prediction":
        return a * model_output + s * latents_noisy
    if prediction_type == "sample":
        return (latents_noisy - a * model_output) / s
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def sds_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, weighting: str = "sds") -> torch.Tensor:
    """w(t) of threestudio's ``weighting_strategy``, shaped [B, 1, 1, 1]."""
    ab = _per_item(alphas_cumprod, t)
    if weighting == "sds":
        return 1 - ab
    if weighting == "uniform":
        return torch.ones_like(ab)
    if weighting == "fantasia3d":
        return ab.sqrt() * (1 - ab)
    raise ValueError(f"unknown weighting strategy {weighting!r}; expected one of {WEIGHTINGS}")


def _as_cond_uncond(text_embeddings, batch_size: int) -> torch.Tensor:
    if isinstance(text_embeddings, (tuple, list)):
        cond, uncond = text_embeddings
        text_embeddings = torch.cat([cond, uncond], dim=0)
    if text_embeddings.shape[0] != 2 * batch_size:
        raise ValueError(
            f"text_embeddings must be cat([cond, uncond]) with 2*B = {2 * batch_size} rows "
            f"(threestudio's prompt_utils.get_text_embeddings order), got {text_embeddings.shape[0]}"
        )
    return text_embeddings


def _unet_forward(unet: Callable, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    # Run in the UNet's own dtype (fp16 weights on GPU) and hand back the caller's dtype,
    # as threestudio's forward_unet does.
    dtype = getattr(unet, "dtype", x.dtype)
    out = unet(x.to(dtype), t.to(x.device), encoder_hidden_states=emb.to(dtype))
    out = getattr(out, "sample", out)
    return out.to(x.dtype)


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
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The SDS gradient w.r.t. ``latents`` [B, 4, h, w] at timesteps ``t`` [B].

    ``unet`` is a diffusers ``UNet2DConditionModel`` (or any callable with its
    signature); ``text_embeddings`` is ``cat([cond, uncond])`` [2B, L, D] or a
    ``(cond, uncond)`` pair. ``noise`` (or ``generator``) fixes the injected noise.
    Returns ``(grad, aux)``; ``aux`` holds ``noise``, ``latents_noisy``,
    ``noise_pred`` (guided epsilon), ``latents_denoised`` (one-step x0 estimate), ``w``
    and ``t`` for logging or threestudio's guidance_eval.
    """
    batch_size = latents.shape[0]
    text_embeddings = _as_cond_uncond(text_embeddings, batch_size)
    t = torch.as_tensor(t, device=latents.device, dtype=torch.long).reshape(-1).expand(batch_size)
    alphas_cumprod = alphas_cumprod.to(latents.device)
    with torch.no_grad():
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype,
                                device=generator.device if generator is not None else latents.device)
        noise = noise.to(latents)
        latents_noisy = add_noise(latents.detach(), noise, t, alphas_cumprod)
        x_in = torch.cat([latents_noisy] * 2, dim=0)
        t_in = torch.cat([t] * 2)
        out = _unet_forward(unet, x_in, t_in, text_embeddings)
        eps = to_epsilon(out, x_in, t_in, alphas_cumprod, prediction_type)
        eps_text, eps_uncond = eps.chunk(2)
        noise_pred = eps_text + guidance_scale * (eps_text - eps_uncond)

        w = sds_weight(alphas_cumprod, t, weighting).to(latents.dtype)
        grad = torch.nan_to_num(w * (noise_pred - noise))
        if grad_clip is not None:
            grad = grad.clamp(-grad_clip, grad_clip)

        ab = _per_item(alphas_cumprod, t).to(latents.dtype)
        latents_denoised = (latents_noisy - (1 - ab).sqrt() * noise_pred) / ab.sqrt()
    aux = {"noise": noise, "latents_noisy": latents_noisy, "noise_pred": noise_pred,
           "latents_denoised": latents_denoised, "w": w, "t": t}
    return grad, aux


def sds_loss(latents: torch.Tensor, grad: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """threestudio's reparameterised SDS loss: d(loss)/d(latents) = grad / batch_size."""
    batch_size = latents.shape[0] if batch_size is None else batch_size
    target = (latents - grad).detach()
    return 0.5 * F.mse_loss(latents, target, reduction="sum") / batch_size


def encode_images(vae, images: torch.Tensor, resolution: Optional[int] = None,
                  generator: Optional[torch.Generator] = None, sample: bool = True) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] -> scaled VAE latents, differentiable w.r.t. ``images``.

    ``resolution`` resizes first (bilinear, as threestudio's 64 -> 512 upsampling of
    renders). ``sample=True`` draws from the posterior as threestudio does;
    ``False`` takes its mean.
    """
    if resolution is not None and tuple(images.shape[-2:]) != (resolution, resolution):
        images = F.interpolate(images, (resolution, resolution), mode="bilinear", align_corners=False)
    input_dtype = images.dtype
    dist = vae.encode((images * 2.0 - 1.0).to(vae.dtype)).latent_dist
    latents = dist.sample(generator) if sample else dist.mode()
    return (latents * vae.config.scaling_factor).to(input_dtype)


def decode_latents(vae, latents: torch.Tensor, latent_size: Optional[int] = None) -> torch.Tensor:
    """Scaled latents -> images [B, 3, H, W] in [0, 1] (optionally resizing latents first)."""
    input_dtype = latents.dtype
    if latent_size is not None and tuple(latents.shape[-2:]) != (latent_size, latent_size):
        latents = F.interpolate(latents, (latent_size, latent_size), mode="bilinear", align_corners=False)
    image = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
    return (image * 0.5 + 0.5).clamp(0, 1).to(input_dtype)


def score_distillation(
    components: Any,
    rgb: torch.Tensor,
    text_embeddings: Union[torch.Tensor, Sequence[torch.Tensor]],
    cfg: Optional[SDSConfig] = None,
    rgb_as_latents: bool = False,
    t: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, Any]:
    """One SDS evaluation as threestudio's guidance ``__call__`` does it.

    ``components`` is an :class:`~threestudio_dreambooth3d.core.sd_models.SDComponents`
    (base model plus any DreamBooth weights); ``rgb`` is [B, H, W, C] as threestudio
    renderers give it: colours in [0, 1] (upsampled to the model resolution and
    encoded) or, with ``rgb_as_latents``, 4 latent channels (resized to the latent
    size). Returns threestudio's keys ``loss_sds``, ``grad_norm``, ``min_step``,
    ``max_step`` plus ``latents``, ``grad`` and the :func:`sds_grad` aux.
    """
    cfg = cfg or SDSConfig()
    batch_size = rgb.shape[0]
    rgb_bchw = rgb.permute(0, 3, 1, 2)
    if rgb_as_latents:
        size = int(components.unet.config.sample_size)
        latents = F.interpolate(rgb_bchw, (size, size), mode="bilinear", align_corners=False)
    else:
        latents = encode_images(components.vae, rgb_bchw, components.resolution, generator=generator)

    scheduler = components.scheduler
    min_step, max_step = step_range(scheduler.config.num_train_timesteps, cfg.min_step_percent, cfg.max_step_percent)
    if t is None:
        t = sample_timesteps(batch_size, min_step, max_step, generator=generator, device=latents.device)
    grad, aux = sds_grad(
        components.unet, latents, text_embeddings, t, cfg.guidance_scale, scheduler.alphas_cumprod,
        weighting=cfg.weighting_strategy, prediction_type=components.prediction_type,
        grad_clip=cfg.grad_clip, generator=generator,
    )
    return {"loss_sds": sds_loss(latents, grad, batch_size), "grad_norm": grad.norm(), "min_step": min_step,
            "max_step": max_step, "latents": latents, "grad": grad, **aux}
