"""SDEdit (img2img) translation of rendered views, batched: DreamBooth3D's stage 2.

diffusers' ``StableDiffusionImg2ImgPipeline`` does the sampling; this module only
builds it from already-loaded components (so the DreamBooth weights are the ones
used) and runs it over views in chunks, one pipeline call per chunk.

Guidance here uses diffusers' convention, ``eps_u + s (eps_c - eps_u)`` with the
usual 7.5, not SDS's threestudio convention.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm import tqdm


def build_img2img_pipeline(components):
    """An img2img pipeline sharing ``components``' modules, with a DDIM sampler made
    from the model's own scheduler config (threestudio's choice of sampler)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from .sampling import make_pipeline

    return make_pipeline(components, cls=StableDiffusionImg2ImgPipeline)


def _resize(images: torch.Tensor, size) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size, mode="bilinear", align_corners=False, antialias=True)


def translate(
    components,
    images: torch.Tensor,
    prompts: Union[str, Sequence[str]],
    strength: float = 0.5,
    guidance_scale: float = 7.5,
    num_inference_steps: int = 50,
    negative_prompt: Union[str, Sequence[str]] = "",
    seed: Union[int, Sequence[int]] = 0,
    batch_size: int = 8,
    resolution: Optional[int] = None,
) -> torch.Tensor:
    """Translate views [B, 3, H, W] in [0, 1] toward ``prompts``; returns [B, 3, H, W].

    Views are resized to the model's ``resolution`` (512 for SD) for the pipeline and
    the results back to H x W, so each output still matches the camera it was rendered
    from. ``prompts`` is one string or one per view. View ``i`` uses its own generator
    seeded ``seed + i`` (or ``seed[i]``), so a result does not depend on ``batch_size``
    or on which other views share its chunk.

    ``strength`` 0 returns the views unchanged: SDEdit from t = 0 adds no noise and
    takes no denoising step, so the only change would be the VAE's reconstruction
    error, which is not an edit and would only blur the pseudo views (diffusers itself
    refuses a zero-step run).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
    n = images.shape[0]
    prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
    negatives = [negative_prompt] * n if isinstance(negative_prompt, str) else list(negative_prompt)
    seeds = [seed + i for i in range(n)] if isinstance(seed, int) else list(seed)
    for name, values in (("prompts", prompts), ("negative_prompt", negatives), ("seed", seeds)):
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} images; give one per image or a single value")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 0 or n == 0:
        return images.clone()
    if int(num_inference_steps * strength) < 1:
        raise ValueError(
            f"strength {strength} x num_inference_steps {num_inference_steps} is less than one denoising step; "
            "raise either (or use strength 0 for no change)"
        )

    pipe = build_img2img_pipeline(components)
    device = components.vae.device
    resolution = resolution or components.resolution
    # The pipeline reads tensors with negative values as [-1, 1]: keep renders in [0, 1].
    model_in = _resize(images.clamp(0, 1).to(device, components.vae.dtype), (resolution, resolution))
    out = []
    # one bar over the views (what `dreambooth3d run` shows for stage 2), not one per batch
    pipe.set_progress_bar_config(disable=True)
    bar = tqdm(total=n, desc="translating views", unit="view")
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds[sl]]
        result = pipe(
            prompt=prompts[sl],
            image=model_in[sl],
            strength=strength,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            negative_prompt=negatives[sl],
            generator=generators,
            output_type="pt",
        ).images
        out.append(result.float())
        bar.update(result.shape[0])
    bar.close()
    return _resize(torch.cat(out), tuple(images.shape[-2:])).clamp(0, 1).to(images.device, images.dtype)
