"""Text-to-image sampling from loaded components (class images, checks, previews)."""
from __future__ import annotations

from typing import List, Sequence, Union

import torch


def make_pipeline(components, cls=None):
    """A diffusers pipeline sharing the loaded modules (no copy), with a DDIM sampler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    cls = cls or StableDiffusionPipeline
    pipe = cls(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_images(
    components,
    prompts: Union[str, Sequence[str]],
    num_images: int = 1,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
    batch_size: int = 4,
    output_type: str = "pt",
) -> torch.Tensor:
    """Images [N, 3, R, R] in [0, 1] (or scaled latents with ``output_type="latent"``).

    Image i uses seed ``seed + i`` so results do not depend on batching.
    """
    pipe = make_pipeline(components)
    prompts = [prompts] * num_images if isinstance(prompts, str) else list(prompts)
    out: List[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
        res = pipe(
            chunk,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=gens,
            output_type=output_type,
        ).images
        out.append(res.float().cpu())
    return torch.cat(out)
