"""dreambooth-sds-guidance with no DreamBooth weights == threestudio's stable-diffusion-guidance.

Both guidances load the same tiny SD folder and are called with the same render after
the same seed: they draw the VAE posterior sample, the timesteps and the noise from
torch's global generator in the same order, so every option of threestudio's Config
(weighting, Perp-Neg, HiFA image loss, grad_clip, sqrt_anneal, SJC, latents as renders,
guidance_eval) must give the same ``loss_sds``, ``loss_sds_img`` and gradient on the
render, to rel. 1e-4.

threestudio hard-codes Stable Diffusion's sizes (renders resized to 512 px, latents
to 64 x 64); ours uses the model's own (512 / 64 for SD base). The tiny model is 32 px /
16 latents, so stock's module sees an ``F.interpolate`` that maps exactly those two
sizes to the tiny model's - nothing else of it is touched.
"""
import pytest
import torch
import torch.nn.functional as F

REL = 1e-4
PROMPT = "a sks dog"


class _TinySizes:
    """``torch.nn.functional`` for stock's module, with SD's 512 px / 64 latents mapped to the tiny model's."""

    def __init__(self, resolution: int, latent: int):
        self.sizes = {(512, 512): (resolution, resolution), (64, 64): (latent, latent)}

    def __getattr__(self, name):
        return getattr(F, name)

    def interpolate(self, x, size=None, **kw):
        return F.interpolate(x, self.sizes.get(tuple(size), size), **kw)


@pytest.fixture
def stock_sizes(threestudio, monkeypatch):
    import threestudio.models.guidance.stable_diffusion_guidance as stock_module

    monkeypatch.setattr(stock_module, "F", _TinySizes(32, 16))


def rel_diff(ours: torch.Tensor, stock: torch.Tensor) -> float:
    return ((ours - stock).abs().max() / stock.abs().max().clamp_min(1e-12)).item()


def build(threestudio, name, tiny_sd_path, **cfg):
    return threestudio.find(name)({"pretrained_model_name_or_path": str(tiny_sd_path), "half_precision_weights": False,
                                   **cfg})


@pytest.fixture(scope="module")
def guidances(threestudio, tiny_sd_path):
    """(stock, ours) per value of use_sjc, the one option read at configure time; the others
    are read from cfg at every call, so one pair serves every case."""
    return {sjc: (build(threestudio, "stable-diffusion-guidance", tiny_sd_path, use_sjc=sjc),
                  build(threestudio, "dreambooth-sds-guidance", tiny_sd_path, use_sjc=sjc)) for sjc in (False, True)}


@pytest.fixture(scope="module")
def prompt_utils(threestudio, tiny_sd_path, tmp_path_factory):
    """threestudio's own prompt processor output, with and without Perp-Neg."""
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("prompt_cache"))  # its .threestudio_cache
    try:
        return {pn: threestudio.find("stable-diffusion-prompt-processor")(
            {"pretrained_model_name_or_path": str(tiny_sd_path), "prompt": PROMPT, "spawn": False,
             "use_perp_neg": pn})() for pn in (False, True)}
    finally:
        os.chdir(cwd)


# the per-call options of threestudio's Config a case may set, at their defaults
CALL_OPTIONS = {"weighting_strategy": "sds", "use_img_loss": False, "grad_clip": None, "sqrt_anneal": False,
                "trainer_max_steps": 25000, "var_red": True, "max_items_eval": 4}


def set_options(guidance, **opts):
    for key, value in {**CALL_OPTIONS, **opts}.items():
        setattr(guidance.cfg, key, value)
    guidance.grad_clip_val = None  # update_step only sets it when grad_clip is given


# front-side and side-back interpolation for Perp-Neg (azimuth 30 and 150), two elevations
VIEWS = dict(elevation=torch.tensor([10.0, 30.0]), azimuth=torch.tensor([30.0, 150.0]),
             camera_distances=torch.tensor([2.0, 2.0]))


def call(guidance, pu, rgb, seed, step=0, **kw):
    """One guidance call after ``update_step(0, step)``; returns outputs and d(sum of losses)/d(rgb)."""
    guidance.update_step(0, step)
    rgb = rgb.clone().requires_grad_()
    torch.manual_seed(seed)
    out = guidance(rgb, pu, **VIEWS, **kw)
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    return out, rgb.grad


CASES = {
    "sds": {},
    "uniform": {"weighting_strategy": "uniform"},
    "fantasia3d": {"weighting_strategy": "fantasia3d"},
    "perp_neg": {"perp_neg": True},
    "perp_neg_fantasia3d": {"perp_neg": True, "weighting_strategy": "fantasia3d"},
    "img_loss": {"use_img_loss": True},
    "img_loss_perp_neg_uniform": {"use_img_loss": True, "perp_neg": True, "weighting_strategy": "uniform"},
    "grad_clip": {"grad_clip": [0, 0.05, 0.5, 10], "step": 4},
    "grad_clip_img_loss": {"grad_clip": 0.02, "use_img_loss": True},
    "sqrt_anneal": {"sqrt_anneal": True, "trainer_max_steps": 100, "step": 36},
    "sjc": {"use_sjc": True},
    "sjc_no_var_red_perp_neg": {"use_sjc": True, "var_red": False, "perp_neg": True},
    "latents": {"rgb_as_latents": True},
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_ours_equals_stock_stable_diffusion_guidance(guidances, prompt_utils, stock_sizes, case):
    opts = dict(CASES[case])
    perp_neg, step, latents = opts.pop("perp_neg", False), opts.pop("step", 0), opts.pop("rgb_as_latents", False)
    stock, ours = guidances[opts.pop("use_sjc", False)]
    for g in (stock, ours):
        set_options(g, **opts)
    pu = prompt_utils[perp_neg]
    assert pu.use_perp_neg == perp_neg
    rgb = torch.rand(2, 16, 16, 4 if latents else 3, generator=torch.Generator().manual_seed(0))
    if latents:
        rgb = rgb * 2 - 1  # Latent-NeRF renders latents, not colours
    out_s, grad_s = call(stock, pu, rgb, 0, step, rgb_as_latents=latents)
    out_o, grad_o = call(ours, pu, rgb, 0, step, rgb_as_latents=latents)
    assert set(out_o) == set(out_s)
    assert (out_o["min_step"], out_o["max_step"]) == (out_s["min_step"], out_s["max_step"])
    for key in [k for k in out_s if k.startswith("loss_") or k == "grad_norm"]:
        assert rel_diff(out_o[key], out_s[key]) < REL, (key, out_o[key], out_s[key])
    assert grad_s.abs().sum() > 0 and rel_diff(grad_o, grad_s) < REL
    if opts.get("use_img_loss"):
        assert out_s["loss_sds_img"] > 0
    if opts.get("sqrt_anneal"):
        assert out_s["min_step"] == out_s["max_step"] != int(0.02 * 1000)  # the range collapsed, mid-way
    if opts.get("grad_clip") is not None:  # the clip was active: the unclipped loss is another number
        set_options(stock, **{**opts, "grad_clip": None})
        unclipped, _ = call(stock, pu, rgb, 0, step, rgb_as_latents=latents)
        assert rel_diff(unclipped["loss_sds"], out_s["loss_sds"]) > 1e-2


@pytest.mark.parametrize("perp_neg", [False, True], ids=["cfg", "perp_neg"])
def test_guidance_eval_images_equal_stocks(guidances, prompt_utils, stock_sizes, perp_neg):
    """guidance_eval=True: the same dict of images as threestudio's (one batch item: stock's
    Perp-Neg eval picks another item's negatives for B > 1, ours each item's own)."""
    stock, ours = guidances[False]
    pu = prompt_utils[perp_neg]
    rgb = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    views = {k: v[1:] for k, v in VIEWS.items()}
    res = []
    for g in (stock, ours):
        set_options(g, max_items_eval=1, min_step_percent=0.02, max_step_percent=0.1)  # few DDIM steps left
        g.update_step(0, 0)
        torch.manual_seed(3)
        with torch.no_grad():
            res.append(g(rgb, pu, **views, guidance_eval=True)["eval"])
        set_options(g, min_step_percent=0.02, max_step_percent=0.98)
    s, o = res
    assert o["bs"] == s["bs"] == 1 and o["texts"] == s["texts"]
    assert o["noise_levels"] == pytest.approx(s["noise_levels"])
    for key in ("imgs_noisy", "imgs_1step", "imgs_1orig", "imgs_final"):
        assert o[key].shape == s[key].shape == (1, 32, 32, 3), key
        assert (o[key] - s[key]).abs().max() < 1e-4, key
    assert (o["imgs_final"] - o["imgs_noisy"]).abs().max() > 1e-3  # it denoised
