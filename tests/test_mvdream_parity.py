"""Our MultiViewUNet and mvdream_camera against the original MVDream code, at random weights.

Skipped unless the original code (github bytedance/MVDream) is importable: a checkout named
by MVDREAM_SRC, /work/ext/MVDream, or an installed ``mvdream``. The original model is built
from an LDM config, its weights written in the released checkpoint layout
(``model.diffusion_model.*`` beside ignored VAE/text-encoder keys), converted with
``convert_mvdream_checkpoint`` and loaded with ``MultiViewUNet.from_pretrained``.
"""
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from threestudio_dreambooth3d.core.mvdream import MultiViewUNet, mvdream_camera, standard_cameras
from threestudio_dreambooth3d.core.mvdream_convert import convert_mvdream_checkpoint
from threestudio_dreambooth3d.tiny_models.mvdream import TINY_UNET_PARAMS

for src in (os.environ.get("MVDREAM_SRC"), "/work/ext/MVDream"):
    if src and Path(src, "mvdream").is_dir() and src not in sys.path:
        sys.path.insert(0, src)
        break
openaimodel = pytest.importorskip("mvdream.ldm.modules.diffusionmodules.openaimodel",
                                  reason="original MVDream code not importable (set MVDREAM_SRC)")
camera_utils = pytest.importorskip("mvdream.camera_utils")
pytestmark = pytest.mark.slow  # builds and runs the original model: seconds per test

REL_TOL = 1e-4

LAYOUTS = {
    # the tiny model CI uses: SD's layout (linear projections, 64-wide heads -> 16 here)
    "tiny": TINY_UNET_PARAMS,
    # 1x1-conv projections, a fixed head count, 2 res blocks and 3 levels (last without attention)
    "conv-heads": dict(image_size=16, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2, 1],
                       num_res_blocks=2, channel_mult=[1, 2, 2], num_heads=4, use_spatial_transformer=True,
                       use_linear_in_transformer=False, transformer_depth=1, context_dim=24, legacy=False,
                       camera_dim=16),
    # no camera embedding, res blocks per level, attention only at the lower resolution
    "no-camera": dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2],
                      num_res_blocks=[1, 2], channel_mult=[1, 2], num_head_channels=32, use_spatial_transformer=True,
                      use_linear_in_transformer=True, transformer_depth=1, context_dim=16),
}


def relative_difference(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def _randomise(model: torch.nn.Module, seed: int) -> None:
    # the original zero-initialises output convs and projections, which would hide most of the net
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if ("norm" in name or "in_layers.0" in name or "out_layers.0" in name
                               or name.startswith("out.0")) and name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _write_ldm_yaml(path: Path, params: dict) -> Path:
    from omegaconf import OmegaConf

    cfg = {"model": {"target": "mvdream.ldm.interface.LatentDiffusionInterface", "params": {
        "unet_config": {"target": "mvdream.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel",
                        "params": dict(params)}}}}
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def pair(request, tiny_sd_path, tmp_path_factory):
    """(original model, our converted model, layout params)."""
    params = LAYOUTS[request.param]
    tmp = tmp_path_factory.mktemp(f"mvdream-{request.param}")
    torch.manual_seed(0)
    original = openaimodel.MultiViewUNetModel(**params).eval()
    _randomise(original, seed=1)
    released = {"model.diffusion_model." + k: v for k, v in original.state_dict().items()}
    released["first_stage_model.encoder.conv_in.weight"] = torch.zeros(1)  # ignored, as the VAE is
    released["cond_stage_model.model.positional_embedding"] = torch.zeros(1)
    ckpt = tmp / "released.ckpt"
    torch.save({"state_dict": released} if request.param == "conv-heads" else released, ckpt)
    config = _write_ldm_yaml(tmp / "config.yaml", params)
    out = convert_mvdream_checkpoint(ckpt, base=str(tiny_sd_path), out=tmp / "converted", config=config)
    ours = MultiViewUNet.from_pretrained(str(out) + "/unet").eval()
    return original, ours, params


def _inputs(params, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = params["image_size"]
    x = torch.randn(batch, params["in_channels"], size, size, generator=g)
    ctx = torch.randn(batch, 7, params["context_dim"], generator=g)
    c2w = torch.randn(batch, 4, 4, generator=g)
    c2w[:, 3] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    return x, ctx, mvdream_camera(c2w) if params.get("camera_dim") else None


def _out(result):
    return result.sample if hasattr(result, "sample") else result


@torch.no_grad()
def test_two_objects_four_views_with_cameras(pair):
    original, ours, params = pair
    x, ctx, cam = _inputs(params, 8)
    t = torch.tensor([999, 999, 999, 999, 37, 37, 37, 37])  # one t per object, as the SDS guidance samples
    ref = original(x, t, context=ctx, camera=cam, num_frames=4)
    got = _out(ours(x, t, encoder_hidden_states=ctx, camera=cam, num_frames=4))
    assert relative_difference(got, ref) <= REL_TOL
    # the views really interact, so the comparison above covers multi-view attention
    per_view = original(x, t, context=ctx, camera=cam, num_frames=1)
    assert relative_difference(per_view, ref) > 1e-3


@torch.no_grad()
def test_one_object_four_views_scalar_timestep(pair):
    original, ours, params = pair
    x, ctx, cam = _inputs(params, 4, seed=1)
    ref = original(x, torch.full((4,), 500), context=ctx, camera=cam, num_frames=4)
    assert relative_difference(_out(ours(x, 500, encoder_hidden_states=ctx, camera=cam, num_frames=4)), ref) <= REL_TOL
    assert relative_difference(_out(ours(x, torch.tensor(500), encoder_hidden_states=ctx, camera=cam,
                                         num_frames=4)), ref) <= REL_TOL


@torch.no_grad()
def test_single_view_without_camera(pair):
    original, ours, params = pair
    x, ctx, _ = _inputs(params, 3, seed=2)
    t = torch.tensor([10, 400, 900])
    ref = original(x, t, context=ctx, camera=None, num_frames=1)
    assert relative_difference(_out(ours(x, t, encoder_hidden_states=ctx, camera=None, num_frames=1)), ref) <= REL_TOL
    assert relative_difference(_out(ours(x, t, encoder_hidden_states=ctx)), ref) <= REL_TOL


def _threestudio_c2w(n: int, seed: int = 0) -> torch.Tensor:
    """Camera-to-world matrices as threestudio's random camera datamodule makes them (look-at, z up)."""
    from threestudio_dreambooth3d.core.cameras import camera_from_spherical

    g = torch.Generator().manual_seed(seed)
    el = torch.rand(n, generator=g) * 30
    az = torch.rand(n, generator=g) * 360 - 180
    dist = 0.8 + torch.rand(n, generator=g) * 1.7
    return camera_from_spherical(el, az, dist)["c2w"]


def test_mvdream_camera_matches_mvdream_threestudio():
    # MVDream-threestudio's guidance (camera_condition_type "rotation"): no coordinate conversion
    # (threestudio's c2w is already in MVDream's frame), normalize_camera, then flatten(start_dim=1)
    c2w = _threestudio_c2w(8)
    c2w[0, :3, 3] = 0.0  # degenerate positions: the guidance's +1e-8 decides what comes out
    c2w[1, :3, 3] *= 1e-7
    keep = c2w.clone()
    ours = mvdream_camera(c2w)
    assert torch.equal(c2w, keep)  # ours leaves the input alone (normalize_camera writes into it)
    ref = camera_utils.normalize_camera(c2w.clone()).flatten(start_dim=1)
    assert ours.shape == (8, 16)
    assert relative_difference(ours, ref) <= REL_TOL
    assert torch.equal(ours, ref)


def test_standard_cameras_match_get_camera():
    for elevation, azimuth_start in ((15, 0), (15, 90), (0, 45)):
        ref = camera_utils.get_camera(4, elevation=elevation, azimuth_start=azimuth_start)
        got = standard_cameras(4, elevation=elevation, azimuth_start=azimuth_start)
        assert torch.allclose(got, ref, atol=1e-6)
        # already on the unit sphere: the guidance's normalisation leaves them (almost) as they are
        assert torch.allclose(mvdream_camera(got.reshape(-1, 4, 4)), got, atol=1e-6)


@pytest.mark.parametrize("yaml_name", ["sd-v2-base.yaml", "sd-v1.yaml"])
def test_released_layouts_map_key_for_key(yaml_name):
    """The default layout is the original's sd-v2-base.yaml; for it and sd-v1.yaml (sd-v1.5-4view)
    every UNet weight lands on a weight of ours of the same shape (built on the meta device)."""
    from threestudio_dreambooth3d.core.mvdream_convert import (SD21_4VIEW_UNET, _check_fit, diffusers_unet_config,
                                                               key_map, read_ldm_unet_params)

    yaml = Path(camera_utils.__file__).parent / "configs" / yaml_name
    if not yaml.is_file():
        pytest.skip(f"{yaml} not in this MVDream checkout")
    params = read_ldm_unet_params(yaml)
    if yaml_name == "sd-v2-base.yaml":
        assert {k: params[k] for k in SD21_4VIEW_UNET} == SD21_4VIEW_UNET
    params = {k: v for k, v in params.items() if k != "use_checkpoint"}
    with torch.device("meta"):
        original = openaimodel.MultiViewUNetModel(**params)
        ours = MultiViewUNet(**diffusers_unet_config(params))
    state = original.state_dict()
    mapping = key_map(params, state)
    assert set(mapping) == set(state)
    _check_fit({mapping[k]: v for k, v in state.items()}, ours, yaml_name)
