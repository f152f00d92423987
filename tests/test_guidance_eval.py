"""guidance_eval's pictures (core/guidance_eval.py): what the model makes of an SDS step's noisy latents."""
from types import SimpleNamespace

import pytest
import torch

from threestudio_dreambooth3d.core import guidance_eval as ge, sds, vae

from helpers import PointMassDenoiser, cfg_embeddings


def test_guidance_eval_denoises_to_the_model_mode(tiny):
    # With the exact denoiser of a point mass, one DDIM step's x0 prediction and the full
    # denoising both land on the guided mode x* = mu_c + s (mu_c - mu_u)
    from diffusers import DDIMScheduler

    g = torch.Generator().manual_seed(0)
    mu_c, mu_u = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    emb = cfg_embeddings(tiny, batch_size=3)
    unet = PointMassDenoiser(emb[:1], mu_c, mu_u, tiny.scheduler.alphas_cumprod)
    model = SimpleNamespace(unet=unet, vae=tiny.vae, scheduler=tiny.scheduler, prediction_type="epsilon")
    scale = 2.0
    target = mu_c + scale * (mu_c - mu_u)
    latents = torch.randn(3, 4, 16, 16, generator=g)
    t = torch.tensor([481, 941, 101])  # on the DDIM(50) grid, so the one-step x0 estimate is exact too
    grad, aux = sds.sds_grad(unet, latents, emb, t, scale, tiny.scheduler.alphas_cumprod, noise=torch.randn_like(latents))
    out = ge.guidance_eval(model, t, emb, aux["latents_noisy"], aux["noise_pred"], scale, max_items=2)
    assert out["bs"] == 2 and set(out) >= {"imgs_noisy", "imgs_1step", "imgs_1orig", "imgs_final", "noise_levels"}
    # DDIM(50) timesteps are 981, 961, ..., 1: resume at the first one <= t
    assert out["noise_levels"] == pytest.approx([0.481, 0.941])
    idx = ge.eval_timesteps(DDIMScheduler.from_config(tiny.scheduler.config), torch.tensor([500, 960, 100, 981]))
    assert idx.tolist() == [25, 2, 45, 0]
    want = vae.decode_latents(tiny.vae, target).permute(0, 2, 3, 1).expand(2, -1, -1, -1)
    for key in ("imgs_1orig", "imgs_final"):
        assert out[key].shape == (2, 32, 32, 3)
        torch.testing.assert_close(out[key], want, atol=2e-3, rtol=0)
    noisy = vae.decode_latents(tiny.vae, aux["latents_noisy"][:2]).permute(0, 2, 3, 1)
    torch.testing.assert_close(out["imgs_noisy"], noisy)
    assert (out["imgs_1step"] - want).abs().mean() > 1e-2  # one step is not yet the end
    assert ge.guidance_eval(model, t, emb, aux["latents_noisy"], aux["noise_pred"], scale, max_items=-1)["bs"] == 3
