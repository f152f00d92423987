"""MVDreamBooth on the tiny MVDream: which losses see which batches, the class sets, the regulariser, the CLI."""
import json

import pytest
import torch

from threestudio_dreambooth3d.core.mvdream import MultiViewUNet, standard_cameras
from threestudio_dreambooth3d.core.mvdreambooth import (MVDreamBoothConfig, MVDreamBoothTrainer,
                                                        parameter_deviation)
from threestudio_dreambooth3d.core.sd_models import load_mvdream_unet
from threestudio_dreambooth3d.errors import ModelNotFoundError


def make_cfg(model, subject_dir, out, **kw):
    base = dict(pretrained_model=str(model), subject_dir=str(subject_dir), class_noun="dog", output_dir=str(out),
                num_class_images=8, class_inference_steps=2, max_steps=4, checkpoint_steps={"partial": 2, "full": 4},
                learning_rate=1e-2, lora_rank=4, batch_size=2)
    base.update(kw)
    return MVDreamBoothConfig(**base)


@pytest.fixture(scope="module")
def trainer(tiny_mvdream_path, subject_dir, tmp_path_factory):
    return MVDreamBoothTrainer(make_cfg(tiny_mvdream_path, subject_dir, tmp_path_factory.mktemp("mvdb")))


def _record_unet_calls(unet, monkeypatch):
    calls = []
    forward = unet.forward

    def spy(sample, timestep, encoder_hidden_states, camera=None, num_frames=1, **kw):
        calls.append({"batch": sample.shape[0], "num_frames": num_frames, "camera": camera, "t": timestep})
        return forward(sample, timestep, encoder_hidden_states, camera=camera, num_frames=num_frames, **kw)

    monkeypatch.setattr(unet, "forward", spy)
    return calls


def test_photos_train_as_single_views_and_class_sets_as_four_views_with_cameras(trainer, monkeypatch):
    calls = _record_unet_calls(trainer.components.unet, monkeypatch)
    g = torch.Generator().manual_seed(0)
    losses = trainer.loss(trainer.sample_batch(g), g)
    assert set(losses) == {"instance_loss", "prior_loss", "param_loss", "loss"}
    instance, prior = calls
    # instance_loss: the photos, MVDream's 2D mode
    assert (instance["batch"], instance["num_frames"], instance["camera"]) == (2, 1, None)
    # prior_loss: one class set, 4 views with the standard cameras it was sampled at, one t for the object
    assert (prior["batch"], prior["num_frames"]) == (4, 4)
    orbits = [standard_cameras(4, 15.0, azimuth_start=a) for a in (0.0, 22.5)]
    assert any(torch.allclose(prior["camera"].cpu(), o) for o in orbits)
    assert len(set(prior["t"].tolist())) == 1
    # param_loss: no UNet pass; zero before training (peft's LoRA starts with B = 0)
    assert losses["param_loss"].item() == 0.0
    torch.testing.assert_close(losses["loss"], losses["instance_loss"] + losses["prior_loss"] + losses["param_loss"])


def test_class_sets_are_sampled_once_with_their_cameras(trainer, tiny_mvdream_path, subject_dir, monkeypatch):
    sets = sorted(trainer.cfg.class_dir.glob("set_*"))
    assert len(sets) == 2  # 8 class images = 2 sets of 4 views
    for i, folder in enumerate(sets):
        assert sorted(p.name for p in folder.glob("*.png")) == [f"view_{j}.png" for j in range(4)]
        cams = torch.tensor(json.loads((folder / "cameras.json").read_text())["cameras"])
        torch.testing.assert_close(cams, standard_cameras(4, 15.0, azimuth_start=22.5 * i))
    assert trainer.class_pixels.shape[0] == 8 and trainer.class_cameras.shape == (8, 16)
    # a second run sharing the cache samples nothing
    import threestudio_dreambooth3d.core.mvdreambooth as mvdb

    monkeypatch.setattr(mvdb, "sample_multiview", lambda *a, **k: pytest.fail("class sets resampled"))
    MVDreamBoothTrainer(make_cfg(tiny_mvdream_path, subject_dir, trainer.out / "again",
                                 class_images_dir=str(trainer.cfg.class_dir)))


def test_parameter_preservation_measures_the_weight_change(tiny_mvdream_path):
    from threestudio_dreambooth3d.core import lora

    unet = MultiViewUNet.from_pretrained(str(tiny_mvdream_path / "unet"))
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    lora.add_lora(unet, 4, 4.0, lora.UNET_TARGETS)
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    l1 = parameter_deviation({"unet": unet}, {}, "l1")
    l2 = parameter_deviation({"unet": unet}, {}, "l2")
    l1.backward()
    assert all(p.grad is not None for n, p in unet.named_parameters() if "lora_B" in n)
    # the same numbers from merging the adapters into the weights
    lora.merge_lora(unet)
    deltas = [(v - base[k]) for k, v in unet.state_dict().items() if not torch.equal(v, base[k])]
    n = sum(d.numel() for d in deltas)
    assert len(deltas) > 0
    torch.testing.assert_close(l1.detach(), sum(d.abs().sum() for d in deltas) / n)
    torch.testing.assert_close(l2.detach(), sum(d.pow(2).sum() for d in deltas) / n)
    # full mode: the change since the start of the run
    w = torch.nn.Linear(3, 2)
    start = {"m.weight": w.weight.detach().clone(), "m.bias": w.bias.detach().clone()}
    with torch.no_grad():
        w.weight += 0.5
    torch.testing.assert_close(parameter_deviation({"m": w}, start, "l1"), torch.tensor(0.5 * 6 / 8))


@pytest.mark.slow
def test_parameter_preservation_holds_the_adapters_back(tiny_mvdream_path, subject_dir, tmp_path):
    moved = {}
    for weight in (0.0, 1e3):
        cfg = make_cfg(tiny_mvdream_path, subject_dir, tmp_path / f"w{weight}", prior_preservation=False,
                       param_preservation_weight=weight, max_steps=6, checkpoint_steps={"full": 6})
        trainer = MVDreamBoothTrainer(cfg)
        history = trainer.train().history
        assert ("param_loss" in history[-1]) == (weight > 0)
        moved[weight] = parameter_deviation(trainer._trained_modules(), {}, "l1").item()
    assert 0 < moved[1e3] < 0.5 * moved[0.0]


def test_full_mode_measures_the_change_since_the_start(tiny_mvdream_path, subject_dir, tmp_path):
    cfg = make_cfg(tiny_mvdream_path, subject_dir, tmp_path, prior_preservation=False, mode="full",
                   learning_rate=1e-3, max_steps=2, checkpoint_steps={"full": 2})
    history = MVDreamBoothTrainer(cfg).train().history
    assert history[0]["param_loss"] == 0.0 < history[1]["param_loss"]


@pytest.mark.slow
def test_finetune_cli_with_mvdream(tiny_mvdream_path, tiny_sd_path, subject_dir, tmp_path, capsys):
    from threestudio_dreambooth3d import cli

    out = tmp_path / "run"
    argv = ["finetune", "--base-model", "mvdream", "--model", str(tiny_mvdream_path), "--subject", str(subject_dir),
            "--class-noun", "dog", "--out", str(out), "--steps", "2", "--num-class-images", "4", "--lr", "1e-2",
            "--lora-rank", "4", "--device", "cpu"]
    assert cli.main(argv) == 0
    tuned = load_mvdream_unet(out / "checkpoints" / "full")
    base = load_mvdream_unet(tiny_mvdream_path)
    assert isinstance(tuned, MultiViewUNet)
    x, ctx = torch.randn(4, 4, 16, 16), torch.randn(4, 7, 32)
    cam = standard_cameras(4)
    with torch.no_grad():
        diff = (tuned(x, 500, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample
                - base(x, 500, encoder_hidden_states=ctx, camera=cam, num_frames=4).sample).abs().max()
    assert diff > 1e-5
    capsys.readouterr()
    # an SD folder is not an MVDream one: one clear line before any work
    bad = argv[:4] + [str(tiny_sd_path)] + argv[5:-6] + ["--out", str(tmp_path / "bad")]
    assert cli.main(bad) == 2
    assert "convert-mvdream" in capsys.readouterr().err
    with pytest.raises(ModelNotFoundError):
        MVDreamBoothTrainer(make_cfg(tiny_sd_path, subject_dir, tmp_path / "bad2"))
