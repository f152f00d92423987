"""Renders in and out of the latent space (core/vae.py), as threestudio's guidance does it."""

import torch
import torch.nn.functional as F

from threestudio_dreambooth3d.core import vae


def test_encode_upsamples_to_model_resolution_and_decode_inverts_layout(tiny):
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lat = vae.encode_images(tiny.vae, img, tiny.resolution, sample=False)
    up = F.interpolate(img, (32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = tiny.vae.encode(up * 2 - 1).latent_dist.mode() * tiny.vae.config.scaling_factor
    torch.testing.assert_close(lat.detach(), ref)
    dec = vae.decode_latents(tiny.vae, lat.detach())
    assert dec.shape == (1, 3, 32, 32) and 0 <= dec.min() and dec.max() <= 1
    with torch.no_grad():
        ref_dec = (tiny.vae.decode(ref / tiny.vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(dec, ref_dec)
