"""SDS (core/sds.py): threestudio's formula by hand, SJC, HiFA, and that SDS pulls toward a model's mode."""
from types import SimpleNamespace
from typing import List

import pytest
import torch
import torch.nn.functional as F

from threestudio_dreambooth3d.core import guidance_math, sds, vae
from threestudio_dreambooth3d.core.sd_models import load_sd_components

from helpers import PointMassDenoiser, cfg_embeddings


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


def test_sds_grad_matches_threestudio_formula_by_hand(tiny):
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 16, 16)
    noise = torch.randn_like(latents)
    t = torch.tensor([50, 700])
    emb = cfg_embeddings(tiny, batch_size=2)
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


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sds_converges_to_the_mode_of_an_exact_denoiser(tiny, prediction_type):
    # With the exact denoiser of a point mass the SDS gradient is noise-free:
    # grad = w a/s (x - x*), so every step must move strictly closer to
    # x* = mu_c + s (mu_c - mu_u). A sign, weighting, CFG-order or v-conversion
    # error moves x elsewhere.
    g = torch.Generator().manual_seed(0)
    mu_c, mu_u = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    emb = cfg_embeddings(tiny)
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
    emb = cfg_embeddings(components, batch_size=4)
    ac = components.scheduler.alphas_cumprod
    unet = components.unet.requires_grad_(True).train()
    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        t = torch.randint(0, 1000, (8,), generator=g)
        noise = torch.randn(8, 4, 16, 16, generator=g)
        noisy = guidance_math.add_noise(subject.expand(8, -1, -1, -1), noise, t, ac)
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=emb).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return components.freeze()


@pytest.fixture(scope="module")
def tiny_fitted_to_subject(tiny_sd_path):
    subject = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(99))
    return fit_to_subject(load_sd_components(tiny_sd_path), subject), subject


@pytest.mark.slow
@pytest.mark.full  # statistical, ~7 s alone: 100 fitting steps of the tiny UNet
def test_sds_pulls_the_tiny_model_toward_its_subject(tiny_fitted_to_subject, tiny):
    comps, subject = tiny_fitted_to_subject
    control = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    init = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(10))

    traj = run_sds(comps, cfg_embeddings(comps), init, steps=60)
    dist = torch.stack([(x - subject).norm() for x in traj])
    ctrl = torch.stack([(x - control).norm() for x in traj])
    checkpoints = dist[::10]
    assert (checkpoints[1:] < checkpoints[:-1]).all(), checkpoints  # monotone at a coarse scale
    assert dist[-1] < 0.75 * dist[0], dist
    # it is the subject the model learnt, not a generic shrink toward zero
    assert dist[-1] / dist[0] < ctrl[-1] / ctrl[0] - 0.1

    # the untrained model has no such pull: the same run barely moves toward the subject
    base = run_sds(tiny, cfg_embeddings(tiny), init, steps=60)
    assert (base[-1] - subject).norm() > 0.95 * dist[0]


def test_score_distillation_from_pixels_backpropagates_to_the_render(tiny):
    # threestudio renders small (64) and upsamples to the model resolution (512) before
    # the VAE; the tiny model's resolution is 32.
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    emb = cfg_embeddings(tiny, batch_size=2)
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


@pytest.mark.slow
@pytest.mark.full  # statistical: SDS steps from noise, compared by distance to the subject
def test_sds_pulls_toward_the_subject_the_model_was_personalised_on(personalised, tiny_sd_path, subject_latents):
    """Real DreamBooth, real SDS: from the same start, SDS with the DreamBooth 'full'
    checkpoint and "a sks dog" moves the image toward the subject photos; the base model
    does not. Guidance scale 1 (the pure conditional score): the CFG extrapolation of a
    random tiny model, trained 300 steps, points nowhere in particular."""
    from helpers import latent_distance_to_subject

    init = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))

    def final_distance(checkpoint):
        comps = load_sd_components(tiny_sd_path, checkpoint=checkpoint).freeze()
        traj = run_sds(comps, cfg_embeddings(comps, "a sks dog", batch_size=2), init, steps=150, guidance_scale=1.0, lr=0.02)
        return latent_distance_to_subject(traj[-1], subject_latents)

    start = latent_distance_to_subject(init, subject_latents)
    personalised_end = final_distance(personalised.checkpoints["full"])
    base_end = final_distance(None)
    assert personalised_end < 0.9 * start
    assert personalised_end < 0.85 * base_end


class EmbeddingUNet(torch.nn.Module):
    """A stand-in UNet whose noise prediction is the first 2 numbers of the text
    embedding, broadcast: guidance results are then computable by hand."""

    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.seen_t = []

    def forward(self, x, t, encoder_hidden_states):
        self.seen_t.append(t.clone())
        return encoder_hidden_states[:, 0, :2].reshape(-1, 2, 1, 1).expand_as(x).to(x.dtype)


def test_sds_grad_with_perp_neg_uses_the_perpendicular_guidance():
    emb = torch.zeros(4, 3, 2)
    emb[:, 0] = torch.tensor([[3.0, 1.0], [1.0, 1.0], [1.0, 3.0], [2.0, 2.0]])  # pos, uncond, neg0, neg1 (B = 1)
    weights = torch.tensor([[-0.5, -2.0]])
    ac = torch.linspace(0.99, 0.01, 1000)
    latents, noise, t = torch.zeros(1, 2, 3, 3), torch.full((1, 2, 3, 3), 0.5), torch.tensor([600])
    unet = EmbeddingUNet()
    grad, aux = sds.sds_grad(unet, latents, emb, t, 10.0, ac, weighting="uniform", noise=noise,
                             neg_guidance_weights=weights)
    expected_eps = torch.tensor([21.0, -29.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3)  # hand value above
    torch.testing.assert_close(aux["noise_pred"], expected_eps)
    torch.testing.assert_close(grad, expected_eps - noise)
    assert torch.equal(unet.seen_t[-1], torch.tensor([600] * 4))  # one pass on the 4x batch
    # without Perp-Neg the same embeddings are plain CFG on (cond, uncond)
    g_cfg, aux_cfg = sds.sds_grad(unet, latents, emb[:2], t, 10.0, ac, weighting="uniform", noise=noise)
    torch.testing.assert_close(aux_cfg["noise_pred"][0, :, 0, 0], torch.tensor([3.0 + 10 * 2, 1.0]))
    with pytest.raises(ValueError, match="get_text_embeddings_perp_neg"):
        sds.sds_grad(unet, latents, emb[:3], t, 10.0, ac, noise=noise, neg_guidance_weights=weights)


def test_sjc_grad_by_hand():
    # SJC with a constant noise predictor eps: the UNet sees sqrt(a) y + sqrt(1-a) noise
    # (SJC's z / sqrt(1 + sigma^2)); grad = eps - noise with var_red, eps without.
    emb = torch.zeros(2, 3, 2)
    emb[:, 0] = torch.tensor([[0.3, -0.2], [0.1, 0.1]])
    ac = torch.linspace(0.99, 0.01, 1000)
    y = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 800])
    eps = torch.tensor([0.3 + 2 * 0.2, -0.2 + 2 * -0.3]).view(1, 2, 1, 1)  # CFG scale 2 on (cond, uncond)
    emb2 = torch.cat([emb[:1], emb[:1], emb[1:], emb[1:]])  # B = 2: cat([cond, cond, uncond, uncond])
    g, aux = sds.sjc_grad(EmbeddingUNet(), y, emb2, t, 2.0, ac, var_red=True, noise=noise)
    torch.testing.assert_close(g, eps - noise, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux["latents_noisy"], guidance_math.add_noise(y, noise, t, ac), rtol=1e-5, atol=1e-6)
    g, _ = sds.sjc_grad(EmbeddingUNet(), y, emb2, t, 2.0, ac, var_red=False, noise=noise)
    torch.testing.assert_close(g, eps.expand_as(y), rtol=1e-5, atol=1e-5)


def test_hifa_image_grad_by_hand():
    ac = torch.tensor([0.64, 0.36])
    image, denoised = torch.ones(2, 3, 2, 2), torch.full((2, 3, 2, 2), 0.5)
    w = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1)
    g = sds.hifa_image_grad(image, denoised, w, ac, torch.tensor([0, 1]))
    # w (x - x_hat) sqrt(a) / sqrt(1 - a): 0.5 * 0.5 * 0.8 / 0.6 and 2 * 0.5 * 0.6 / 0.8
    torch.testing.assert_close(g[:, 0, 0, 0], torch.tensor([1 / 3, 0.75]))


def test_score_distillation_image_loss_is_hifa_on_the_decoded_estimate(tiny):
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    emb = cfg_embeddings(tiny, batch_size=2)
    t = torch.tensor([300, 700])
    cfg = sds.SDSConfig(guidance_scale=100.0, use_img_loss=True, grad_clip=5.0)
    out = sds.score_distillation(tiny, rgb, emb, cfg, t=t, generator=torch.Generator().manual_seed(0))
    image = F.interpolate(rgb.detach().permute(0, 3, 1, 2), (32, 32), mode="bilinear", align_corners=False)
    x0 = vae.decode_latents(tiny.vae, out["latents_denoised"])
    expected = sds.hifa_image_grad(image, x0, out["w"], tiny.scheduler.alphas_cumprod, t).clamp(-5.0, 5.0)
    torch.testing.assert_close(out["grad_img"], expected)
    assert out["grad_img"].abs().sum() > 0
    torch.testing.assert_close(out["loss_sds_img"], 0.5 * expected.pow(2).sum() / 2)
    out["loss_sds_img"].backward()  # the image loss reaches the render
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    no_img = sds.score_distillation(tiny, rgb, emb, sds.SDSConfig(guidance_scale=100.0), t=t)
    assert "loss_sds_img" not in no_img
    with pytest.raises(ValueError, match="use_img_loss.*rgb_as_latents"):
        sds.score_distillation(tiny, torch.rand(1, 16, 16, 4), emb[::2], cfg, rgb_as_latents=True)


def test_unet_and_vae_run_with_autocast_off(tiny):
    """Under an enabled autocast (bf16 on CPU, fp16 on GPU under 16-mixed) fp32 weights
    must still compute in fp32, as threestudio's autocast(enabled=False) ensures."""
    dtypes = []
    hooks = [m.register_forward_hook(lambda mod, args, out: dtypes.append(getattr(out, "sample", out).dtype))
             for m in (tiny.unet, tiny.vae.decoder, tiny.vae.encoder)]
    try:
        rgb = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0))
        emb, t = cfg_embeddings(tiny), torch.tensor([500])
        cfg = sds.SDSConfig(use_img_loss=True)
        ref = sds.score_distillation(tiny, rgb, emb, cfg, t=t, generator=torch.Generator().manual_seed(1))
        dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sds.score_distillation(tiny, rgb, emb, cfg, t=t, generator=torch.Generator().manual_seed(1))
    finally:
        for h in hooks:
            h.remove()
    assert len(dtypes) == 3 and set(dtypes) == {torch.float32}, dtypes  # encoder, UNet, decoder
    torch.testing.assert_close(out["grad"], ref["grad"])
    torch.testing.assert_close(out["loss_sds_img"], ref["loss_sds_img"])
