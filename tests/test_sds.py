"""SDS: threestudio's formula by hand, v-prediction, and that SDS pulls toward a model's mode."""
from types import SimpleNamespace
from typing import List

import pytest
import torch
import torch.nn.functional as F

from threestudio_dreambooth3d.core import sds
from threestudio_dreambooth3d.core.sd_models import load_sd_components

PROMPT = "a sks dog"


@pytest.fixture(scope="module")
def tiny(tiny_sd_path):
    return load_sd_components(tiny_sd_path).freeze()


def _embeddings(components, prompt=PROMPT, batch_size=1):
    cond = components.encode_prompts([prompt] * batch_size)
    uncond = components.encode_prompts([""] * batch_size)
    return torch.cat([cond, uncond])  # threestudio's (cond, uncond) order


class PointMassDenoiser(torch.nn.Module):
    """The exact noise predictor for data that is a single point: ``mu_cond`` under the
    prompt, ``mu_uncond`` without it. Its SDS fixed point under threestudio's CFG
    ``eps_c + s (eps_c - eps_u)`` is ``mu_cond + s (mu_cond - mu_uncond)``."""

    def __init__(self, cond_embedding, mu_cond, mu_uncond, alphas_cumprod, prediction_type="epsilon"):
        super().__init__()
        self.cond_embedding, self.mu_cond, self.mu_uncond = cond_embedding, mu_cond, mu_uncond
        self.alphas_cumprod, self.prediction_type = alphas_cumprod, prediction_type
        self.config = SimpleNamespace(sample_size=mu_cond.shape[-1])

    def forward(self, x, t, encoder_hidden_states):
        is_cond = (encoder_hidden_states - self.cond_embedding).abs().flatten(1).amax(1) < 1e-6
        mu = torch.where(is_cond.view(-1, 1, 1, 1), self.mu_cond, self.mu_uncond)
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        eps = (x - a * mu) / s
        return a * eps - s * mu if self.prediction_type == "v_prediction" else eps


def run_sds(components, text_embeddings, init_latents, steps, guidance_scale=7.5, lr=0.05, seed=0,
            optimizer="adam") -> List[torch.Tensor]:
    """Optimise free latents with SDS through ``score_distillation``; returns the trajectory.

    Works with any components (the tiny model, a DreamBooth-personalised one, or a
    stand-in UNet), so a "pulls toward the subject" test only needs a target.
    """
    x = init_latents.clone().permute(0, 2, 3, 1).requires_grad_()  # BHWC, as renders come
    opt = torch.optim.Adam([x], lr=lr) if optimizer == "adam" else torch.optim.SGD([x], lr=lr)
    cfg = sds.SDSConfig(guidance_scale=guidance_scale)
    gen = torch.Generator().manual_seed(seed)
    trajectory = [init_latents.clone()]
    for _ in range(steps):
        out = sds.score_distillation(components, x, text_embeddings, cfg, rgb_as_latents=True, generator=gen)
        opt.zero_grad()
        out["loss_sds"].backward()
        opt.step()
        trajectory.append(x.detach().permute(0, 3, 1, 2).clone())
    return trajectory


def test_step_range_and_timesteps_match_threestudio():
    assert sds.step_range(1000, 0.02, 0.98) == (20, 980)
    assert sds.step_range(1000, 0.5, 0.5) == (500, 500)  # sqrt_anneal collapses the range
    assert sds.step_range(999, 0.02, 0.98) == (19, 979)  # int() truncates like threestudio
    with pytest.raises(ValueError, match="min_step_percent"):
        sds.step_range(1000, 0.9, 0.1)
    t = sds.sample_timesteps(4000, 20, 980, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) == 20 and int(t.max()) == 980  # inclusive bounds
    again = sds.sample_timesteps(4000, 20, 980, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_sds_grad_matches_threestudio_formula_by_hand(tiny):
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 16, 16)
    noise = torch.randn_like(latents)
    t = torch.tensor([50, 700])
    emb = _embeddings(tiny, batch_size=2)
    scale = 100.0
    ac = tiny.scheduler.alphas_cumprod
    grad, aux = sds.sds_grad(tiny.unet, latents, emb, t, scale, ac, noise=noise)

    # threestudio's compute_grad_sds spelled out: scheduler.add_noise, one UNet pass on
    # the doubled batch, chunk into (text, uncond), CFG, w = 1 - alpha_bar
    noisy = tiny.scheduler.add_noise(latents, noise, t)
    with torch.no_grad():
        pred = tiny.unet(torch.cat([noisy] * 2), torch.cat([t] * 2), encoder_hidden_states=emb).sample
    eps_c, eps_u = pred.chunk(2)
    eps = eps_c + scale * (eps_c - eps_u)
    expected = (1 - ac[t]).view(-1, 1, 1, 1) * (eps - noise)
    torch.testing.assert_close(aux["latents_noisy"], noisy)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)
    x0 = (noisy - (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * eps) / ac[t].sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(aux["latents_denoised"], x0, rtol=1e-4, atol=1e-4)

    # the other weightings, and a (cond, uncond) pair instead of the concatenation
    for weighting, w in [("uniform", torch.ones(2)), ("fantasia3d", ac[t].sqrt() * (1 - ac[t]))]:
        g, _ = sds.sds_grad(tiny.unet, latents, (emb[:2], emb[2:]), t, scale, ac, weighting=weighting, noise=noise)
        torch.testing.assert_close(g, w.view(-1, 1, 1, 1) * (eps - noise), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        sds.sds_grad(tiny.unet, latents, emb, t, scale, ac, weighting="sjc", noise=noise)
    with pytest.raises(ValueError, match="cat\\(\\[cond, uncond\\]\\)"):
        sds.sds_grad(tiny.unet, latents, emb[:2], t, scale, ac, noise=noise)

    # clipping bounds every element; a generator makes the noise reproducible
    clipped, _ = sds.sds_grad(tiny.unet, latents, emb, t, scale, ac, noise=noise, grad_clip=0.1)
    assert clipped.abs().max() <= 0.1 and clipped.abs().max() == pytest.approx(0.1)
    g1, a1 = sds.sds_grad(tiny.unet, latents, emb, t, scale, ac, generator=torch.Generator().manual_seed(3))
    g2, a2 = sds.sds_grad(tiny.unet, latents, emb, t, scale, ac, generator=torch.Generator().manual_seed(3))
    assert torch.equal(g1, g2) and torch.equal(a1["noise"], a2["noise"])


def test_sds_loss_gradient_is_grad_over_batch():
    latents = torch.randn(3, 4, 8, 8, requires_grad=True)
    grad = torch.randn(3, 4, 8, 8)
    loss = sds.sds_loss(latents, grad)
    loss.backward()
    torch.testing.assert_close(latents.grad, grad / 3)
    # threestudio: 0.5 * mse(latents, latents - grad, sum) / B = 0.5 * |grad|^2 / B
    assert loss.item() == pytest.approx(0.5 * grad.pow(2).sum().item() / 3, rel=1e-5)


def test_v_prediction_converts_to_epsilon(tiny):
    torch.manual_seed(1)
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 400, 990])
    sched = tiny.scheduler
    x_t = sched.add_noise(x0, eps, t)
    v = sched.get_velocity(x0, eps, t)  # diffusers' own definition of the v target
    ac = sched.alphas_cumprod
    torch.testing.assert_close(sds.to_epsilon(v, x_t, t, ac, "v_prediction"), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sds.to_epsilon(x0, x_t, t, ac, "sample"), eps, rtol=1e-3, atol=1e-3)
    assert sds.to_epsilon(eps, x_t, t, ac, "epsilon") is eps
    with pytest.raises(ValueError, match="prediction_type"):
        sds.to_epsilon(eps, x_t, t, ac, "flow")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sds_converges_to_the_mode_of_an_exact_denoiser(tiny, prediction_type):
    # With the exact denoiser of a point mass the SDS gradient is noise-free:
    # grad = w a/s (x - x*), so every step must move strictly closer to
    # x* = mu_c + s (mu_c - mu_u). A sign, weighting, CFG-order or v-conversion
    # error moves x elsewhere.
    g = torch.Generator().manual_seed(0)
    mu_c, mu_u = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    emb = _embeddings(tiny)
    unet = PointMassDenoiser(emb[:1], mu_c, mu_u, tiny.scheduler.alphas_cumprod, prediction_type)
    model = SimpleNamespace(unet=unet, scheduler=tiny.scheduler, prediction_type=prediction_type)
    scale = 7.5
    target = mu_c + scale * (mu_c - mu_u)
    traj = run_sds(model, emb, torch.zeros(1, 4, 16, 16), steps=40, guidance_scale=scale, lr=1.0, optimizer="sgd")
    dist = torch.stack([(x - target).norm() for x in traj])
    above_float_noise = dist[:-1] > 1e-5 * dist[0]
    assert (dist[1:] < dist[:-1])[above_float_noise].all(), dist
    assert dist[-1] < 1e-3 * dist[0]


def fit_to_subject(components, subject, steps=100, lr=2e-3, seed=0):
    """Overfit the UNet on one 'subject' latent (cond and uncond rows): a model whose
    mode we know, standing in for a DreamBooth-personalised checkpoint."""
    emb = _embeddings(components, batch_size=4)
    ac = components.scheduler.alphas_cumprod
    unet = components.unet.requires_grad_(True).train()
    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        t = torch.randint(0, 1000, (8,), generator=g)
        noise = torch.randn(8, 4, 16, 16, generator=g)
        noisy = sds.add_noise(subject.expand(8, -1, -1, -1), noise, t, ac)
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=emb).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return components.freeze()


@pytest.fixture(scope="module")
def tiny_fitted_to_subject(tiny_sd_path):
    subject = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(99))
    return fit_to_subject(load_sd_components(tiny_sd_path), subject), subject


@pytest.mark.slow  # ~7 s alone: 100 fitting steps of the tiny UNet
def test_sds_pulls_the_tiny_model_toward_its_subject(tiny_fitted_to_subject, tiny):
    comps, subject = tiny_fitted_to_subject
    control = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    init = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(10))

    traj = run_sds(comps, _embeddings(comps), init, steps=60)
    dist = torch.stack([(x - subject).norm() for x in traj])
    ctrl = torch.stack([(x - control).norm() for x in traj])
    checkpoints = dist[::10]
    assert (checkpoints[1:] < checkpoints[:-1]).all(), checkpoints  # monotone at a coarse scale
    assert dist[-1] < 0.75 * dist[0], dist
    # it is the subject the model learnt, not a generic shrink toward zero
    assert dist[-1] / dist[0] < ctrl[-1] / ctrl[0] - 0.1

    # the untrained model has no such pull: the same run barely moves toward the subject
    base = run_sds(tiny, _embeddings(tiny), init, steps=60)
    assert (base[-1] - subject).norm() > 0.95 * dist[0]


def test_score_distillation_from_pixels_backpropagates_to_the_render(tiny):
    # threestudio renders small (64) and upsamples to the model resolution (512) before
    # the VAE; the tiny model's resolution is 32.
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    emb = _embeddings(tiny, batch_size=2)
    out = sds.score_distillation(tiny, rgb, emb, sds.SDSConfig(guidance_scale=100.0),
                                 generator=torch.Generator().manual_seed(0))
    assert out["latents"].shape == (2, 4, 16, 16)
    assert (out["min_step"], out["max_step"]) == (20, 980)
    assert ((out["t"] >= 20) & (out["t"] <= 980)).all()
    out["latents"].retain_grad()
    out["loss_sds"].backward()
    torch.testing.assert_close(out["latents"].grad, out["grad"] / 2)
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    assert out["grad_norm"] == pytest.approx(out["grad"].norm().item())


def test_encode_upsamples_to_model_resolution_and_decode_inverts_layout(tiny):
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lat = sds.encode_images(tiny.vae, img, tiny.resolution, sample=False)
    up = F.interpolate(img, (32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = tiny.vae.encode(up * 2 - 1).latent_dist.mode() * tiny.vae.config.scaling_factor
    torch.testing.assert_close(lat.detach(), ref)
    dec = sds.decode_latents(tiny.vae, lat.detach())
    assert dec.shape == (1, 3, 32, 32) and 0 <= dec.min() and dec.max() <= 1
    with torch.no_grad():
        ref_dec = (tiny.vae.decode(ref / tiny.vae.config.scaling_factor).sample * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(dec, ref_dec)


def test_sds_pulls_toward_the_subject_the_model_was_personalised_on(personalised, tiny_sd_path, subject_latents):
    """Real DreamBooth, real SDS: from the same start, SDS with the DreamBooth 'full'
    checkpoint and "a sks dog" moves the image toward the subject photos; the base model
    does not. Guidance scale 1 (the pure conditional score): the CFG extrapolation of a
    random tiny model, trained 300 steps, points nowhere in particular."""
    from helpers import latent_distance_to_subject

    init = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))

    def final_distance(checkpoint):
        comps = load_sd_components(tiny_sd_path, checkpoint=checkpoint).freeze()
        traj = run_sds(comps, _embeddings(comps, "a sks dog", batch_size=2), init, steps=150, guidance_scale=1.0, lr=0.02)
        return latent_distance_to_subject(traj[-1], subject_latents)

    start = latent_distance_to_subject(init, subject_latents)
    personalised_end = final_distance(personalised.checkpoints["full"])
    base_end = final_distance(None)
    assert personalised_end < 0.9 * start
    assert personalised_end < 0.85 * base_end
