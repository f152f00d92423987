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
  w.r.t. ``latents`` is ``grad / B``;
* Perp-Neg (:func:`perp_neg_guidance`): text embeddings ``cat([pos, uncond, neg])``
  with K negatives per item, ``eps = eps_u + scale * (e_pos + sum_k w_k perp(e_k, e_pos))``;
* HiFA's image-space loss (:func:`hifa_image_grad`) and score Jacobian chaining
  (:func:`sjc_grad`), threestudio's ``use_img_loss`` and ``use_sjc``;
* the UNet and VAE run with autocast off, in their own weight dtype, so a 16-mixed
  trainer does not silently run fp32 weights in fp16 (threestudio's
  ``autocast(enabled=False)`` on ``forward_unet``/``encode_images``/``decode_latents``).

Unlike threestudio, v-prediction models (SD 2.x at 768 px) are supported by turning
the model output into epsilon before guidance.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

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
    use_img_loss: bool = False  # HiFA image-space SDS: adds loss_sds_img
    use_sjc: bool = False  # score Jacobian chaining instead of SDS
    var_red: bool = True  # SJC's variance reduction (subtract the injected noise)


def step_range(num_train_timesteps: int, min_step_percent: float, max_step_percent: float) -> Tuple[int, int]:
    """``(min_step, max_step)`` as threestudio's ``set_min_max_steps``: truncation, not rounding."""
    if not 0.0 <= min_step_percent <= max_step_percent <= 1.0:
        raise ValueError(
            f"need 0 <= min_step_percent <= max_step_percent <= 1, got {min_step_percent}, {max_step_percent}"
        )
    return int(num_train_timesteps * min_step_percent), int(num_train_timesteps * max_step_percent)


def sample_timesteps(batch_size: int, min_step: int, max_step: int, generator: Optional[torch.Generator] = None,
                     device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """One timestep per batch item, uniform on ``[min_step, max_step]`` inclusive.

    Without a generator the draw happens on ``device``, as threestudio's
    ``torch.randint(..., device=self.device)``, so both consume the same random stream.
    """
    gen_device = generator.device if generator is not None else (device or "cpu")
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


def autocast_off(device: Union[str, torch.device]):
    """A context with autocast disabled on ``device``'s type (threestudio's ``autocast(enabled=False)``).

    Without it a 16-mixed trainer runs fp32 UNet/VAE weights under fp16 (bf16 on CPU)
    autocast, which ``half_precision_weights: false`` is meant to rule out.
    """
    device_type = torch.device(device).type
    if device_type not in ("cuda", "cpu", "xpu", "mps"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def perpendicular_component(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The part of each item of ``x`` [B, ...] orthogonal to the same item of ``y``.

    threestudio's ``utils.ops.perpendicular_component``: ``x - (<x, y> / max(|y|^2, 1e-6)) y``,
    the floor keeping a zero ``y`` from dividing by zero.
    """
    dims = list(range(1, x.dim()))
    eps = torch.ones_like(x[(slice(None),) + (0,) * len(dims)]) * 1e-6
    coef = (x * y).sum(dim=dims) / torch.maximum((y * y).sum(dim=dims), eps)
    return x - coef.view(-1, *([1] * len(dims))) * y


def cfg_guidance(noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """threestudio's classifier-free guidance on UNet outputs ``cat([eps_text, eps_uncond])``:
    ``eps_text + scale * (eps_text - eps_uncond)``."""
    eps_text, eps_uncond = noise_pred.chunk(2)
    return eps_text + guidance_scale * (eps_text - eps_uncond)


def perp_neg_guidance(noise_pred: torch.Tensor, neg_guidance_weights: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Perp-Neg guidance (Armandpour et al. 2023) exactly as threestudio's guidance combines it.

    ``noise_pred`` is the UNet output on ``cat([pos (B), uncond (B), neg (K*B)])`` where
    the K negatives of item b are rows ``b*K ... b*K + K-1`` of the negative block (the
    layout of ``get_text_embeddings_perp_neg``); ``neg_guidance_weights`` is [B, K]
    (negative numbers: the prompt processor negates the decay). With ``e_pos = eps_pos -
    eps_u`` and ``e_k = eps_neg_k - eps_u``:
    ``eps = eps_u + scale * (e_pos + sum_k w_k * perp(e_k, e_pos))`` - only the part of a
    negative direction orthogonal to the positive one is pushed away from, so "front
    view" can be subtracted from "side view" without cancelling the subject.
    Note the base is ``eps_u``, not ``eps_text`` as in :func:`cfg_guidance`.
    """
    batch_size, n_neg = neg_guidance_weights.shape
    if noise_pred.shape[0] != (2 + n_neg) * batch_size:
        raise ValueError(
            f"Perp-Neg needs UNet outputs for cat([pos, uncond, neg]) = {(2 + n_neg) * batch_size} rows "
            f"(B={batch_size}, K={n_neg} negatives), got {noise_pred.shape[0]}"
        )
    eps_pos = noise_pred[:batch_size]
    eps_uncond = noise_pred[batch_size:2 * batch_size]
    eps_neg = noise_pred[2 * batch_size:]
    e_pos = eps_pos - eps_uncond
    accum = torch.zeros_like(e_pos)
    for k in range(n_neg):
        e_k = eps_neg[k::n_neg] - eps_uncond
        accum = accum + neg_guidance_weights[:, k].view(-1, 1, 1, 1).to(e_pos) * perpendicular_component(e_k, e_pos)
    return eps_uncond + guidance_scale * (e_pos + accum)


def _check_embeddings(text_embeddings, batch_size: int, neg_guidance_weights: Optional[torch.Tensor]) -> torch.Tensor:
    if isinstance(text_embeddings, (tuple, list)):
        text_embeddings = torch.cat(list(text_embeddings), dim=0)
    if neg_guidance_weights is None:
        if text_embeddings.shape[0] != 2 * batch_size:
            raise ValueError(
                f"text_embeddings must be cat([cond, uncond]) with 2*B = {2 * batch_size} rows "
                f"(threestudio's prompt_utils.get_text_embeddings order), got {text_embeddings.shape[0]}"
            )
    else:
        rows = (2 + neg_guidance_weights.shape[-1]) * batch_size
        if neg_guidance_weights.shape[0] != batch_size or text_embeddings.shape[0] != rows:
            raise ValueError(
                f"Perp-Neg text_embeddings must be cat([pos, uncond, neg]) with {rows} rows and "
                f"neg_guidance_weights [B={batch_size}, K] (threestudio's get_text_embeddings_perp_neg), got "
                f"{text_embeddings.shape[0]} rows and weights {tuple(neg_guidance_weights.shape)}"
            )
    return text_embeddings


def _unet_forward(unet: Callable, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    # Run in the UNet's own dtype (fp16 weights on GPU), autocast off, and hand back the
    # caller's dtype, as threestudio's forward_unet does.
    dtype = getattr(unet, "dtype", x.dtype)
    with autocast_off(x.device):
        out = unet(x.to(dtype), t.to(x.device), encoder_hidden_states=emb.to(dtype))
    out = getattr(out, "sample", out)
    return out.to(x.dtype)


def guided_noise_pred(
    unet: Callable,
    latents_noisy: torch.Tensor,
    t: torch.Tensor,
    text_embeddings: Union[torch.Tensor, Sequence[torch.Tensor]],
    guidance_scale: float,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
    neg_guidance_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One UNet pass on the repeated batch and threestudio's guidance: CFG, or Perp-Neg
    when ``neg_guidance_weights`` [B, K] is given (then ``text_embeddings`` has (2+K)B rows)."""
    batch_size = latents_noisy.shape[0]
    text_embeddings = _check_embeddings(text_embeddings, batch_size, neg_guidance_weights)
    repeats = text_embeddings.shape[0] // batch_size
    t = torch.as_tensor(t, device=latents_noisy.device, dtype=torch.long).reshape(-1).expand(batch_size)
    x_in = torch.cat([latents_noisy] * repeats, dim=0)
    t_in = torch.cat([t] * repeats)
    with torch.no_grad():
        eps = to_epsilon(_unet_forward(unet, x_in, t_in, text_embeddings), x_in, t_in,
                         alphas_cumprod.to(latents_noisy.device), prediction_type)
    if neg_guidance_weights is None:
        return cfg_guidance(eps, guidance_scale)
    return perp_neg_guidance(eps, neg_guidance_weights.to(eps.device), guidance_scale)


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

        ab = _per_item(alphas_cumprod, t).to(latents.dtype)
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
        ab = _per_item(alphas_cumprod, t)
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
    ab = _per_item(alphas_cumprod.to(image.device), t).to(image.dtype)
    return w * (image - image_denoised) * ab.sqrt() / (1 - ab).sqrt()


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
    with autocast_off(images.device):
        dist = vae.encode((images * 2.0 - 1.0).to(vae.dtype)).latent_dist
        latents = dist.sample(generator) if sample else dist.mode()
    return (latents * vae.config.scaling_factor).to(input_dtype)


def decode_latents(vae, latents: torch.Tensor, latent_size: Optional[int] = None) -> torch.Tensor:
    """Scaled latents -> images [B, 3, H, W] in [0, 1] (optionally resizing latents first)."""
    input_dtype = latents.dtype
    if latent_size is not None and tuple(latents.shape[-2:]) != (latent_size, latent_size):
        latents = F.interpolate(latents, (latent_size, latent_size), mode="bilinear", align_corners=False)
    with autocast_off(latents.device):
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


def eval_timesteps(scheduler: Any, t_orig: torch.Tensor, num_inference_steps: int = 50) -> torch.Tensor:
    """Index into ``scheduler.timesteps`` (after ``set_timesteps``) of the first inference
    step with timestep <= t, as threestudio's guidance_eval picks where to resume
    denoising (argmin of ``timesteps > t``)."""
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps.to(t_orig.device)
    larger = timesteps.expand(t_orig.shape[0], -1) > t_orig.unsqueeze(-1)
    return torch.min(larger, dim=1)[1]


@torch.no_grad()
def guidance_eval(
    components: Any,
    t_orig: torch.Tensor,
    text_embeddings: torch.Tensor,
    latents_noisy: torch.Tensor,
    noise_pred: torch.Tensor,
    guidance_scale: float,
    neg_guidance_weights: Optional[torch.Tensor] = None,
    max_items: int = 4,
    num_inference_steps: int = 50,
    scheduler: Any = None,
    latent_size: Optional[int] = None,
) -> Dict[str, Any]:
    """threestudio's guidance_eval: what the diffusion model makes of the SDS step's noisy latents.

    For the first ``max_items`` items (all if <= 0): the noisy latents decoded
    (``imgs_noisy``), one DDIM step (eta 1) from the nearest of ``num_inference_steps``
    timesteps (``imgs_1step``), its x0 prediction (``imgs_1orig``) and the full
    denoising to t=0 with the same guidance (``imgs_final``), all [bs, H, W, 3] in
    [0, 1], plus ``noise_levels`` (t / T) and ``bs``. ``scheduler`` defaults to a DDIM
    scheduler built from the model's (threestudio's guidance uses DDIM).
    """
    if scheduler is None:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(components.scheduler.config)
    n = latents_noisy.shape[0]
    bs = min(max_items, n) if max_items > 0 else n
    t_orig = t_orig.to(latents_noisy.device)
    idxs = eval_timesteps(scheduler, t_orig[:bs], num_inference_steps)
    timesteps = scheduler.timesteps
    t = timesteps.to(latents_noisy.device)[idxs]
    fracs = list((t / scheduler.config.num_train_timesteps).cpu().numpy())

    def decode(latents):
        return decode_latents(components.vae, latents, latent_size).permute(0, 2, 3, 1)

    imgs_noisy = decode(latents_noisy[:bs])
    latents_1step, pred_1orig = [], []
    for b in range(bs):
        step = scheduler.step(noise_pred[b:b + 1], t[b], latents_noisy[b:b + 1], eta=1)
        latents_1step.append(step["prev_sample"])
        pred_1orig.append(step["pred_original_sample"])
    latents_1step, pred_1orig = torch.cat(latents_1step), torch.cat(pred_1orig)

    n_rows = text_embeddings.shape[0] // n  # 2 (CFG) or 2+K (Perp-Neg)
    ac = components.scheduler.alphas_cumprod
    latents_final = []
    for b, i in enumerate(idxs):
        latents = latents_1step[b:b + 1]
        emb = text_embeddings[[b + r * n for r in range(n_rows)]]
        weights = neg_guidance_weights[b:b + 1] if neg_guidance_weights is not None else None
        if weights is not None:
            # the negatives of item b sit at rows b*K..b*K+K-1 of the negative block
            k = weights.shape[-1]
            emb = torch.cat([text_embeddings[[b, n + b]], text_embeddings[2 * n + b * k: 2 * n + (b + 1) * k]])
        for step_t in timesteps[int(i) + 1:]:
            eps = guided_noise_pred(components.unet, latents, step_t.reshape(1), emb, guidance_scale, ac,
                                    components.prediction_type, weights)
            latents = scheduler.step(eps, step_t, latents, eta=1)["prev_sample"]
        latents_final.append(latents)
    imgs_final = decode(torch.cat(latents_final))
    return {"bs": bs, "noise_levels": fracs, "imgs_noisy": imgs_noisy, "imgs_1step": decode(latents_1step),
            "imgs_1orig": decode(pred_1orig), "imgs_final": imgs_final}
