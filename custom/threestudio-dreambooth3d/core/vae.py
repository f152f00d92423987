"""Renders in and out of Stable Diffusion's latent space, as threestudio's guidance does it:
images in [0, 1] to scaled VAE latents and back, the VAE run with autocast off in its own
weight dtype (threestudio's ``autocast(enabled=False)`` on ``encode_images``/``decode_latents``)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .guidance_math import autocast_off


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
