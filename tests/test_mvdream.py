"""MVDream's multi-view UNet (ours), its camera input and the checkpoint converter, on the tiny model.

Numerical parity with the original code is tests/test_mvdream_parity.py (needs that code).
"""
import math

import pytest
import torch

from threestudio_dreambooth3d.core.mvdream import MultiViewUNet, is_mvdream_folder, mvdream_camera, standard_cameras
from threestudio_dreambooth3d.core.sd_models import load_mvdream_components, load_mvdream_unet
from threestudio_dreambooth3d.core.mvdream_convert import (convert_mvdream_checkpoint, diffusers_unet_config,
                                                           key_map, original_state_dict)
from threestudio_dreambooth3d.errors import ConfigError, MissingFileError, ModelNotFoundError
from threestudio_dreambooth3d.tiny_models.mvdream import TINY_UNET_PARAMS, build_tiny_mvdream, tiny_mvdream_unet


@pytest.fixture(scope="module")
def unet():
    return tiny_mvdream_unet(seed=0).eval()


def _inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    ctx = torch.randn(batch, 7, TINY_UNET_PARAMS["context_dim"], generator=g)
    cam = standard_cameras(4).repeat(batch // 4 or 1, 1)[:batch]
    return x, ctx, cam


@torch.no_grad()
def test_single_view_equals_plain_attention(unet):
    """F = 1 is SD: the same weights in diffusers' UNet (per-view attention) give the same output."""
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel(**diffusers_unet_config(TINY_UNET_PARAMS)).eval()
    plain.load_state_dict(unet.state_dict())
    x, ctx, cam = _inputs(4)
    torch.testing.assert_close(unet(x, 50, encoder_hidden_states=ctx, camera=cam).sample,
                               plain(x, 50, encoder_hidden_states=ctx, class_labels=cam).sample)
    # no camera: the time embedding alone (MVDream's 2D mode)
    no_cam = unet(x, 50, encoder_hidden_states=ctx, num_frames=1).sample
    plain.class_embedding = None
    torch.testing.assert_close(no_cam, plain(x, 50, encoder_hidden_states=ctx).sample)


@torch.no_grad()
def test_camera_changes_the_output(unet):
    x, ctx, cam = _inputs(4)
    a = unet(x, 300, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample
    b = unet(x, 300, encoder_hidden_states=ctx, camera=cam.roll(1, dims=0), num_frames=4).sample
    c = unet(x, 300, encoder_hidden_states=ctx, camera=None, num_frames=4).sample
    assert (a - b).abs().max() > 1e-3
    assert (a - c).abs().max() > 1e-3


@torch.no_grad()
def test_views_of_one_object_attend_to_each_other_only(unet):
    x, ctx, cam = _inputs(8)
    base = unet(x, 300, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample
    x2 = x.clone()
    x2[1] += torch.randn_like(x2[1])  # object 0, view 2
    moved = unet(x2, 300, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample
    assert (moved[0] - base[0]).abs().max() > 1e-4  # view 1 of the same object sees it
    assert torch.equal(moved[4:], base[4:])  # object 1 never does
    # per view (F = 1) nothing crosses views
    base1 = unet(x, 300, encoder_hidden_states=ctx, camera=cam, num_frames=1).sample
    moved1 = unet(x2, 300, encoder_hidden_states=ctx, camera=cam, num_frames=1).sample
    assert torch.equal(moved1[0], base1[0])


@torch.no_grad()
def test_multi_view_survives_another_attention_processor(unet):
    from diffusers.models.attention_processor import AttnProcessor

    model = tiny_mvdream_unet(seed=0).eval()
    model.set_attn_processor(AttnProcessor())  # e.g. a pipeline resetting processors
    for module in model.modules():  # or one set module by module (xformers does)
        if hasattr(module, "set_processor") and hasattr(module, "to_q"):
            module.set_processor(AttnProcessor())
    x, ctx, cam = _inputs(4)
    torch.testing.assert_close(model(x, 9, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample,
                               unet(x, 9, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample)


def test_gradient_checkpointing_keeps_the_views_together():
    # full-mode finetuning checkpoints by default: the views must still see each other
    model = tiny_mvdream_unet(seed=0).train()
    x, ctx, cam = _inputs(4)
    plain = model(x, 9, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample
    model.enable_gradient_checkpointing()
    torch.testing.assert_close(model(x, 9, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample, plain)


def test_timestep_scalar_or_per_sample(unet):
    x, ctx, cam = _inputs(4)
    with torch.no_grad():
        a = unet(x, 700, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample
        b = unet(x, torch.full((4,), 700), encoder_hidden_states=ctx, camera=cam, num_frames=4).sample
        c = unet(x, torch.tensor(700.0), encoder_hidden_states=ctx, camera=cam, num_frames=4).sample
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_bad_batches_are_refused(unet):
    x, ctx, cam = _inputs(4)
    with pytest.raises(ValueError, match="4-view"):
        unet(x[:3], 1, encoder_hidden_states=ctx[:3], camera=cam[:3], num_frames=4)
    with pytest.raises(ValueError, match="cameras"):
        unet(x, 1, encoder_hidden_states=ctx, camera=cam[:2], num_frames=4)


def test_mvdream_camera_normalises_the_position_only():
    from threestudio_dreambooth3d.core.cameras import camera_from_spherical

    c2w = camera_from_spherical([10.0, 20.0, 30.0], [0.0, 90.0, -45.0], [0.8, 1.5, 3.0])["c2w"]
    keep = c2w.clone()
    cam = mvdream_camera(c2w)
    assert torch.equal(c2w, keep)
    m = cam.reshape(-1, 4, 4)
    assert cam.shape == (3, 16)
    torch.testing.assert_close(m[:, :3, 3].norm(dim=1), torch.ones(3))
    assert torch.equal(m[:, :3, :3], c2w[:, :3, :3])
    assert torch.equal(m[:, 3], c2w[:, 3])
    # a camera at the origin stays there (MVDream's normalisation divides by norm + 1e-8)
    assert torch.equal(mvdream_camera(torch.eye(4)[None]), torch.eye(4).reshape(1, 16))


def test_standard_cameras_orbit_at_fifteen_degrees():
    cams = standard_cameras(4, elevation=15.0).reshape(4, 4, 4).double()
    pos = cams[:, :3, 3]
    torch.testing.assert_close(pos.norm(dim=1), torch.ones(4, dtype=torch.double))
    torch.testing.assert_close(pos[:, 2], torch.full((4,), math.sin(math.radians(15)), dtype=torch.double))  # z up
    az = torch.rad2deg(torch.atan2(pos[:, 1], pos[:, 0]))
    gaps = (az.roll(-1) - az).remainder(360)
    torch.testing.assert_close(gaps, torch.full((4,), 90.0, dtype=torch.double), atol=1e-4, rtol=0)
    # looks at the origin: the camera's back axis (column 2) points from the origin to the camera
    torch.testing.assert_close(cams[:, :3, 2], pos, atol=1e-6, rtol=0)


def test_original_key_names_of_the_tiny_layout():
    # where the original MultiViewUNetModel puts these tiny-layout modules (input_blocks.2 is
    # the downsample, output_blocks.1.1 the upsample, output_blocks.2 the first attention level)
    keys = ["input_blocks.0.0.weight", "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.1.proj_in.weight",
            "input_blocks.2.0.op.weight", "input_blocks.3.0.skip_connection.weight",
            "middle_block.1.transformer_blocks.0.attn1.to_q.weight", "middle_block.2.out_layers.3.bias",
            "output_blocks.1.1.conv.weight", "output_blocks.2.1.transformer_blocks.0.ff.net.0.proj.weight",
            "output_blocks.3.0.emb_layers.1.weight", "camera_embed.2.bias", "time_embed.0.weight", "out.2.weight"]
    assert key_map(TINY_UNET_PARAMS, keys) == {
        "input_blocks.0.0.weight": "conv_in.weight",
        "input_blocks.1.0.in_layers.0.weight": "down_blocks.0.resnets.0.norm1.weight",
        "input_blocks.1.1.proj_in.weight": "down_blocks.0.attentions.0.proj_in.weight",
        "input_blocks.2.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.3.0.skip_connection.weight": "down_blocks.1.resnets.0.conv_shortcut.weight",
        "middle_block.1.transformer_blocks.0.attn1.to_q.weight": "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "middle_block.2.out_layers.3.bias": "mid_block.resnets.1.conv2.bias",
        "output_blocks.1.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.2.1.transformer_blocks.0.ff.net.0.proj.weight":
            "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
        "output_blocks.3.0.emb_layers.1.weight": "up_blocks.1.resnets.1.time_emb_proj.weight",
        "camera_embed.2.bias": "class_embedding.linear_2.bias",
        "time_embed.0.weight": "time_embedding.linear_1.weight",
        "out.2.weight": "conv_out.weight",
    }


@pytest.fixture(scope="module")
def released_ckpt(unet, tmp_path_factory):
    """The tiny UNet written in the released checkpoint layout, with VAE/text-encoder keys beside it."""
    state = original_state_dict(unet, TINY_UNET_PARAMS)
    state["first_stage_model.decoder.conv_out.weight"] = torch.zeros(3)
    state["cond_stage_model.model.ln_final.weight"] = torch.zeros(3)
    path = tmp_path_factory.mktemp("released") / "tiny-4view.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    from omegaconf import OmegaConf

    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    OmegaConf.save(OmegaConf.create({"model": {"params": {"unet_config": {"params": TINY_UNET_PARAMS}}}}), path)
    return path


def test_released_layout_converts_back_to_the_same_model(unet, released_ckpt, tiny_yaml, tiny_sd_path, tmp_path):
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight" in torch.load(released_ckpt)
    out = convert_mvdream_checkpoint(released_ckpt, base=str(tiny_sd_path), out=tmp_path / "mv", config=tiny_yaml)
    assert is_mvdream_folder(out)
    loaded = MultiViewUNet.from_pretrained(str(out) + "/unet").eval()
    x, ctx, cam = _inputs(8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 123, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample,
                                   unet(x, 123, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample,
                                   rtol=0, atol=0)
    comps = load_mvdream_components(out)  # the SD 2.1 parts came from the base folder
    assert isinstance(comps.unet, MultiViewUNet)
    assert comps.vae.config.scaling_factor == pytest.approx(
        __import__("json").loads((tiny_sd_path / "vae" / "config.json").read_text())["scaling_factor"])


def test_legacy_torch_format_and_state_dict_wrapper(unet, released_ckpt, tiny_yaml, tiny_sd_path, tmp_path):
    # torch's pre-zip format cannot be memory-mapped; Lightning-style files wrap the weights in "state_dict"
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": torch.load(released_ckpt)}, legacy, _use_new_zipfile_serialization=False)
    out = convert_mvdream_checkpoint(legacy, base=str(tiny_sd_path), out=tmp_path / "mv", config=tiny_yaml)
    loaded = MultiViewUNet.from_pretrained(str(out) + "/unet")
    for k, v in unet.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_converter_refuses_a_layout_that_does_not_fit(released_ckpt, tiny_sd_path, tmp_path):
    with pytest.raises(ConfigError, match="--config"):  # the default (sd-v2.1-base-4view) layout
        convert_mvdream_checkpoint(released_ckpt, base=str(tiny_sd_path), out=tmp_path / "mv")
    assert not (tmp_path / "mv").exists()
    with pytest.raises(MissingFileError, match="does not exist"):
        convert_mvdream_checkpoint(tmp_path / "nope.pt", base=str(tiny_sd_path), out=tmp_path / "mv")


def test_convert_mvdream_cli(released_ckpt, tiny_yaml, tiny_sd_path, tmp_path, capsys):
    from threestudio_dreambooth3d import cli

    out = tmp_path / "cli-mv"
    assert cli.main(["convert-mvdream", str(released_ckpt), "--config", str(tiny_yaml), "--base", str(tiny_sd_path),
                     "--out", str(out)]) == 0
    assert is_mvdream_folder(out)
    assert cli.main(["convert-mvdream", str(released_ckpt), "--base", str(tiny_sd_path), "--out", str(tmp_path / "x")]) == 2
    assert "--config" in capsys.readouterr().err


def test_build_tiny_mvdream_loads_as_components(tmp_path):
    folder = build_tiny_mvdream(tmp_path / "tiny-mv")
    unet = load_mvdream_unet(folder)
    assert isinstance(unet, MultiViewUNet) and not unet.training
    assert not any(p.requires_grad for p in unet.parameters())
    with pytest.raises(ModelNotFoundError, match="convert-mvdream"):
        load_mvdream_components(tmp_path)
