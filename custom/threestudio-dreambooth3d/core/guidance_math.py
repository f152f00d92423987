"""The guided noise prediction, exactly as threestudio's stable-diffusion-guidance computes it.

* ``t ~ U{min_step, ..., max_step}`` with ``min_step = int(T * min_step_percent)``;
* classifier-free guidance ``eps = eps_text + scale * (eps_text - eps_uncond)``
  (so threestudio's scale 100 is diffusers' 101), text embeddings in threestudio's
  ``cat([cond, uncond])`` order;
* Perp-Neg (:func:`perp_neg_guidance`): text embeddings ``cat([pos, uncond, neg])``
  with K negatives per item, ``eps = eps_u + scale * (e_pos + sum_k w_k perp(e_k, e_pos))``;
* the UNet runs with autocast off, in its own weight dtype, so a 16-mixed trainer does not
  silently run fp32 weights in fp16 (threestudio's ``autocast(enabled=False)`` on ``forward_unet``).

Unlike threestudio, v-prediction models (SD 2.x at 768 px) are supported by turning
the model output into epsilon before guidance (:func:`to_epsilon`).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


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


def per_item(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``values[t]`` (a schedule's alpha_bar at each item's timestep) shaped [B, 1, 1, 1]."""
    return values.to(t.device)[t].view(-1, 1, 1, 1)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward diffusion ``sqrt(a_t) x + sqrt(1 - a_t) eps`` (what ``scheduler.add_noise`` does)."""
    a = per_item(alphas_cumprod, t).to(latents.dtype)
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
    ab = per_item(alphas_cumprod, t).to(model_output.dtype)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    if prediction_type == "v_prediction":
        return a * model_output + s * latents_noisy
    if prediction_type == "sample":
        return (latents_noisy - a * model_output) / s
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


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
