"""threestudio's guidance_eval pictures: what the diffusion model makes of an SDS step's noisy
latents (decoded noisy latents, one DDIM step, its x0 estimate, the full denoising)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .guidance_math import guided_noise_pred
from .vae import decode_latents


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
