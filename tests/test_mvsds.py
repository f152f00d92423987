"""Multi-view SDS (core/mvsds.py) against MVDream-threestudio's formula written out by hand,
and the multi-view camera sampling (core/cameras.multiview_cameras)."""
import pytest
import torch
import torch.nn.functional as F

from threestudio_dreambooth3d.core import cameras, mvsds


class RecordingViewUNet(torch.nn.Module):
    """A stand-in multi-view UNet with MVDream's call signature: every view's output depends on
    its own latents, the mean of its object's views (``num_frames`` at a time), its camera,
    its timestep and its text embedding, so a wrong grouping, camera or CFG order shows."""

    def __init__(self, channels=4, context_dim=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.cam = torch.nn.Linear(16, channels)
        self.ctx = torch.nn.Linear(context_dim, channels)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.calls = []

    def forward(self, sample, timestep, encoder_hidden_states, camera=None, num_frames=1):
        self.calls.append({"camera": camera, "num_frames": num_frames, "timestep": timestep, "n": sample.shape[0]})
        b, c, h, w = sample.shape
        group_mean = sample.view(b // num_frames, num_frames, c, h, w).mean(1).repeat_interleave(num_frames, 0)
        out = self.conv(sample) + 0.5 * group_mean + self.ctx(encoder_hidden_states.mean(1))[:, :, None, None]
        out = out * (1 + timestep.float()[:, None, None, None] / 1000)
        if camera is not None:
            out = out + self.cam(camera)[:, :, None, None]
        return out


def alphas():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2  # SD's scaled-linear schedule
    return torch.cumprod(1 - betas, 0)


def reference(unet, latents, text_embeddings, camera, t_per_object, noise, scale, n_view, recon, rescale, clip=None):
    """MVDream-threestudio's guidance forward, one object (one scalar t) at a time, as written there."""
    ac = alphas()
    cond, uncond = text_embeddings.chunk(2)
    targets = []
    for i, t_val in enumerate(t_per_object):
        sl = slice(i * n_view, (i + 1) * n_view)
        x, eps0 = latents[sl].detach(), noise[sl]
        t = torch.tensor([t_val])
        t_expand = t.repeat(2 * n_view)
        x_noisy = ac[t].sqrt() * x + (1 - ac[t]).sqrt() * eps0  # q_sample
        out = unet(torch.cat([x_noisy] * 2), t_expand, encoder_hidden_states=torch.cat([cond[sl], uncond[sl]]),
                   camera=camera[sl].repeat(2, 1), num_frames=n_view)
        out = getattr(out, "sample", out)
        e_text, e_uncond = out.chunk(2)
        e = e_uncond + scale * (e_text - e_uncond)

        def x0_of(eps):  # predict_start_from_noise
            return (1 / ac[t]).sqrt() * x_noisy - (1 / ac[t] - 1).sqrt() * eps

        if recon:
            x0 = x0_of(e)
            if rescale > 0:
                x0c = x0_of(e_text)
                factor = (x0c.std() + 1e-8) / (x0.std() + 1e-8)
                x0 = rescale * x0 * factor + (1 - rescale) * x0
            targets.append(x0)
        else:
            g = (1 - ac[t]) * (e - eps0)
            if clip is not None:
                g = g.clamp(-clip, clip)
            targets.append(x - torch.nan_to_num(g))
    return torch.cat(targets)


@pytest.mark.parametrize("recon,rescale", [(True, 0.5), (True, 0.0), (False, 0.0)])
def test_gradient_equals_the_original_formula_by_hand(recon, rescale):
    torch.manual_seed(0)
    unet = RecordingViewUNet()
    n_view, n_obj = 4, 2
    latents = torch.randn(n_view * n_obj, 4, 8, 8, requires_grad=True)
    emb = torch.randn(2 * n_view * n_obj, 5, 8)
    cam = torch.randn(n_view * n_obj, 16)
    noise = torch.randn_like(latents)
    t_obj = [700, 150]
    t = torch.tensor(t_obj).repeat_interleave(n_view)
    cfg = mvsds.MVSDSConfig(guidance_scale=50.0, n_view=n_view, recon_loss=recon, recon_std_rescale=rescale,
                            grad_clip=0.3 if not recon else None)
    target, grad, aux = mvsds.multiview_sds_grad(unet, latents, emb, cam, t, alphas(), cfg, noise=noise)
    expected = reference(unet, latents, emb, cam, t_obj, noise, 50.0, n_view, recon, rescale, cfg.grad_clip)
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-5)
    # the loss the guidance returns pulls the latents towards that target: d loss / d x = (x - target) / B
    loss = 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]
    (g,) = torch.autograd.grad(loss, latents)
    torch.testing.assert_close(g, (latents.detach() - expected) / latents.shape[0], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_mv(tiny_mvdream_path):
    from threestudio_dreambooth3d.core.sd_models import load_sd_components

    return load_sd_components(tiny_mvdream_path).freeze()


@pytest.mark.parametrize("recon", [True, False])
def test_gradient_on_the_tiny_mvdream_equals_the_original_formula(tiny_mv, recon):
    """Two objects of 4 views with cameras from mvdream_camera, through our MultiViewUNet."""
    from threestudio_dreambooth3d.core.mvdream import mvdream_camera

    g = torch.Generator().manual_seed(1)
    latents = torch.randn(8, 4, 16, 16, generator=g, requires_grad=True)
    dim = tiny_mv.text_encoder.config.hidden_size
    emb = torch.randn(16, 77, dim, generator=g)
    c2w = cameras.multiview_cameras(2, 4, generator=g)["c2w"]
    cam = mvdream_camera(c2w)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.tensor([600, 300]).repeat_interleave(4)
    cfg = mvsds.MVSDSConfig(n_view=4, recon_loss=recon)
    ac = tiny_mv.scheduler.alphas_cumprod
    target, grad, _ = mvsds.multiview_sds_grad(tiny_mv.unet, latents, emb, cam, t, ac, cfg, noise=noise)
    expected = reference(tiny_mv.unet, latents, emb, cam, [600, 300], noise, 50.0, 4, recon, 0.5 if recon else 0.0)
    torch.testing.assert_close(target, expected, rtol=1e-3, atol=1e-3)  # fp32 noise amplified by CFG 50
    assert torch.allclose(ac, alphas())  # the reference's schedule is the model's


def test_std_rescale_is_per_object():
    x0 = torch.cat([torch.randn(4, 4, 2, 2) * 10, torch.randn(4, 4, 2, 2) * 3])
    x0c = torch.cat([torch.randn(4, 4, 2, 2) * 1, torch.randn(4, 4, 2, 2) * 2])
    out = mvsds.rescale_x0(x0, x0c, n_view=4, rescale=1.0)
    for i in range(2):  # fully rescaled: each object takes its own unguided estimate's std
        torch.testing.assert_close(out[4 * i:4 * i + 4].std(), x0c[4 * i:4 * i + 4].std(), rtol=1e-4, atol=1e-5)
    assert torch.equal(mvsds.rescale_x0(x0, x0c, 4, 0.0), x0)


def test_unet_sees_whole_objects_with_their_cameras_in_both_cfg_halves():
    unet = RecordingViewUNet()
    latents, cam = torch.randn(8, 4, 4, 4), torch.randn(8, 16)
    emb = torch.randn(16, 3, 8)
    mvsds.multiview_sds_grad(unet, latents, emb, cam, torch.full((8,), 500), alphas())
    call = unet.calls[-1]
    assert call["num_frames"] == 4 and call["n"] == 16
    assert torch.equal(call["camera"], torch.cat([cam, cam]))
    mvsds.multiview_sds_grad(unet, latents, emb, None, torch.full((8,), 500), alphas())
    assert unet.calls[-1]["num_frames"] == 1 and unet.calls[-1]["camera"] is None  # MVDream's 2D mode


def test_one_timestep_per_object_and_the_original_draw_for_one_object():
    g = torch.Generator().manual_seed(3)
    t = mvsds.object_timesteps(12, 4, 20, 980, generator=g)
    per_object = t.view(3, 4)
    assert (per_object == per_object[:, :1]).all() and len(set(per_object[:, 0].tolist())) > 1
    assert ((t >= 20) & (t <= 980)).all()
    # one object: the same draw as MVDream-threestudio's torch.randint(min, max + 1, [1])
    torch.manual_seed(5)
    ours = mvsds.object_timesteps(4, 4, 20, 980)
    torch.manual_seed(5)
    theirs = torch.randint(20, 981, [1], dtype=torch.long)
    assert torch.equal(ours, theirs.repeat(4))
    with pytest.raises(ValueError, match="multiple of"):
        mvsds.object_timesteps(6, 4, 20, 980)


def test_score_distillation_loss_backpropagates_to_the_render():
    class IdentityVAE(torch.nn.Module):
        config = type("C", (), {"scaling_factor": 1.0})()
        dtype = torch.float32

        def encode(self, x):
            lat = F.avg_pool2d(torch.cat([x, x[:, :1]], 1), 8)
            return type("O", (), {"latent_dist": type("D", (), {"sample": lambda s, g=None: lat, "mode": lambda s: lat})()})()

    rgb = torch.rand(4, 16, 16, 3, requires_grad=True)
    emb = torch.randn(8, 3, 8)
    torch.manual_seed(0)
    out = mvsds.multiview_score_distillation(RecordingViewUNet(), IdentityVAE(), rgb, emb, torch.randn(4, 16),
                                             alphas(), (20, 980), image_size=32)
    assert out["latents"].shape == (4, 4, 4, 4) and out["t"].unique().numel() == 1
    out["loss_sds"].backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0


def test_mix_guidance_outputs_suffixes_each_prior():
    mixed = mvsds.mix_guidance_outputs({"2d": {"loss_sds": 1.0, "grad_norm": 2.0}, "mv": {"loss_sds": 3.0}})
    assert mixed == {"loss_sds_2d": 1.0, "grad_norm_2d": 2.0, "loss_sds_mv": 3.0}


def test_multiview_cameras_equal_azimuth_gaps_and_shared_per_object_draws():
    g = torch.Generator().manual_seed(0)
    b = cameras.multiview_cameras(3, 4, (0, 30), (-180, 180), (0.8, 1.0), (15, 60), relative_radius=True,
                                  height=8, width=8, generator=g, with_rays=True)
    az = b["azimuth"].view(3, 4)
    torch.testing.assert_close(az[:, 1:] - az[:, :-1], torch.full((3, 3), 90.0), rtol=0, atol=1e-4)
    assert ((az[:, 0] >= -180) & (az[:, 0] < -90)).all()
    for key in ("elevation", "fovy", "camera_distances"):
        v = b[key].view(3, 4)
        assert (v == v[:, :1]).all(), key  # one draw per object
        assert v[:, 0].unique().numel() == 3, key  # objects differ
    assert ((b["elevation"] >= 0) & (b["elevation"] <= 30)).all()
    fovy_deg = torch.rad2deg(b["fovy"])
    assert ((fovy_deg >= 15) & (fovy_deg <= 60)).all()
    relative = b["camera_distances"] * torch.tan(0.5 * b["fovy"])  # relative_radius: d = r / tan(fovy / 2)
    assert ((relative >= 0.8 - 1e-5) & (relative <= 1.0 + 1e-5)).all()
    torch.testing.assert_close(b["c2w"][:, :3, 3].norm(dim=-1), b["camera_distances"])
    assert b["rays_o"].shape == (12, 8, 8, 3)
    again = cameras.multiview_cameras(3, 4, (0, 30), (-180, 180), (0.8, 1.0), (15, 60),
                                      generator=torch.Generator().manual_seed(0), height=8, width=8)
    assert torch.equal(again["c2w"], b["c2w"])


def test_multiview_cameras_absolute_radius_and_bad_ranges():
    b = cameras.multiview_cameras(2, 4, (10, 10), distance_range=(2.0, 2.5), relative_radius=False,
                                  generator=torch.Generator().manual_seed(1))
    assert ((b["camera_distances"] >= 2.0) & (b["camera_distances"] <= 2.5)).all()
    assert torch.allclose(b["elevation"], torch.full((8,), 10.0), atol=1e-4)
    with pytest.raises(ValueError, match="fovy_range_deg"):
        cameras.multiview_cameras(1, 4, fovy_range_deg=(60, 15))
    light = b["light_positions"].norm(dim=-1)
    assert ((light >= 0.8 - 1e-5) & (light <= 1.5 + 1e-5)).all()
