"""The three stages through threestudio's own launch.py: the real configs with the CPU override set
(``threestudio_dreambooth3d.pipeline.smoke``) and the tiny model.

The commands are the ones docs/THREESTUDIO.md gives (and the pipeline builds): stage 1
--train, stage 2 --test resume=<stage-1 ckpt>, stage 3 --train from the pseudo views.
Each trains a single step; the checks are on what the step and the files contain.
"""
import csv
import logging
import math
import os
import runpy
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXTENSION = Path(__file__).resolve().parents[2] / "custom" / "threestudio-dreambooth3d"
PROMPT = "a sks dog"


@pytest.fixture(scope="module")
def project(tmp_path_factory, threestudio):
    """The folder launch.py runs in: ./custom holds our extension, outputs land here."""
    root = tmp_path_factory.mktemp("project")
    (root / "custom").mkdir()
    (root / "custom" / "threestudio-dreambooth3d").symlink_to(EXTENSION)
    return root


def launch(project: Path, threestudio_root: Path, stage: str, mode: str, *overrides: str,
           name: Optional[str] = None) -> Path:
    """``python launch.py --config configs/<name>.yaml <mode> <CPU overrides of stage> <overrides>``
    in-process (``name`` defaults to dreambooth3d-<stage>); returns the trial dir."""
    from threestudio_dreambooth3d.pipeline import smoke

    name = name or f"dreambooth3d-{stage}"
    argv = [str(threestudio_root / "launch.py"), "--config", str(CONFIGS / f"{name}.yaml"), mode,
            f"exp_root_dir={project / 'outputs'}", f"name={name}", "tag=trial", "use_timestamp=false",
            f"system.prompt_processor.prompt={PROMPT}", *smoke.overrides(stage), *overrides]
    old = (os.getcwd(), sys.argv, os.environ.get("CUDA_VISIBLE_DEVICES"))
    # launch.py restyles every handler of this logger through handler.stream, which
    # pytest's capture handlers lack: hide those during the run
    logger = logging.getLogger("pytorch_lightning")
    handlers = logger.handlers[:]
    logger.handlers = [h for h in handlers if hasattr(h, "stream")]
    try:
        os.chdir(project)
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        logger.handlers = handlers
        os.chdir(old[0])
        sys.argv = old[1]
        if old[2] is None:  # launch.py sets it for the process
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    return project / "outputs" / name / "trial"


def metrics(trial: Path):
    rows = list(csv.DictReader(open(trial / "csv_logs" / "version_0" / "metrics.csv")))
    return {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}


def model_args(tiny_sd_path, checkpoint):
    return [f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}", f"system.guidance.checkpoint={checkpoint}"]


@pytest.fixture(scope="module")
def stage1(project, threestudio_root, tiny_sd_path, dreambooth_run):
    return launch(project, threestudio_root, "stage1", "--train", "trainer.max_steps=1",
                  *model_args(tiny_sd_path, dreambooth_run))


SCENE_PROMPT = "a sks dog wearing a party hat"
# the prompt processor's view settings, which stage 2's captions must follow
VIEW_SETTINGS = {"front_threshold": 60.0, "back_threshold": 30.0, "view_dependent_prompt_front": True}


@pytest.fixture(scope="module")
def stage2(project, threestudio_root, tiny_sd_path, dreambooth_run, stage1):
    out = project / "pseudo_views"
    launch(project, threestudio_root, "stage2", "--test",
           f"resume={stage1 / 'ckpts' / 'last.ckpt'}", f"system.pseudo_views_dir={out}",
           f"system.prompt_processor.prompt={SCENE_PROMPT}",
           *[f"system.prompt_processor.{k}={v}" for k, v in VIEW_SETTINGS.items()],
           *model_args(tiny_sd_path, dreambooth_run))
    return out


def fresh_system(threestudio, trial: Path):
    """The system launch.py built for this trial, before training (same seed, same parsed config)."""
    import pytorch_lightning as pl
    from threestudio.utils.config import load_config

    cfg = load_config(str(trial / "configs" / "parsed.yaml"))
    pl.seed_everything(cfg.seed)
    return threestudio.find(cfg.system_type)(cfg.system), cfg


def state_dict(ckpt: Path):
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def test_stage1_trains_one_sds_step_and_writes_the_turntable(threestudio, stage1):
    ckpt = state_dict(stage1 / "ckpts" / "last.ckpt")
    assert ckpt["global_step"] == 1
    m = metrics(stage1)
    assert math.isfinite(m["train/loss_sds"]) and m["train/loss_sds"] > 0
    assert "train/loss_rec" not in m  # stage 1 has no pseudo views
    # the step moved the NeRF away from its initialisation
    init, _ = fresh_system(threestudio, stage1)
    trained = ckpt["state_dict"]
    moved = [k for k, v in init.state_dict().items() if k.startswith("geometry.") and not torch.equal(v, trained[k])]
    assert moved and all(torch.isfinite(trained[k]).all() for k in moved)
    # test phase: 5 orbit frames and the turntable video
    assert len(list((stage1 / "save" / "it1-test").glob("*.png"))) == 5
    assert (stage1 / "save" / "it1-test.mp4").stat().st_size > 0


def test_stage2_writes_a_complete_pseudo_view_set_of_the_stage1_nerf(threestudio, stage1, stage2):
    from PIL import Image

    from threestudio_dreambooth3d.core import cameras

    from threestudio_dreambooth3d.core import views
    from threestudio_dreambooth3d.core.pseudo_views import read_pseudo_views

    s = read_pseudo_views(stage2)
    assert len(s) == 4 and s.images.shape == (4, 32, 32, 3)
    assert s.masks is not None and s.renders is not None
    assert Image.open(stage2 / "contact_sheet.png").size[0] >= 2 * 32
    # the cameras are random viewpoints drawn from the config's training ranges (seed 0), not an orbit
    orbit = cameras.random_cameras(4, (-10.0, 45.0), (-180.0, 180.0), (1.5, 2.0), (40.0, 70.0), 32, 32, seed=0)
    torch.testing.assert_close(torch.tensor([c["c2w"] for c in s.cameras]), orbit["c2w"], atol=1e-5, rtol=0)
    assert [c["fovy_deg"] for c in s.cameras] == pytest.approx(torch.rad2deg(orbit["fovy"]).tolist(), abs=1e-4)
    # captions: the checkpoint's subject prompt (not the scene prompt), in the prompt processor's
    # style and with its thresholds, as stage 3's SDS prompts name these cameras
    vp = views.ViewPrompts(**VIEW_SETTINGS)
    names = vp.names(orbit["elevation"], orbit["azimuth"])
    assert names != views.view_names(orbit["elevation"], orbit["azimuth"])  # the settings matter here
    assert s.captions == [vp.prompt(PROMPT, v) for v in names]
    assert [c["view"] for c in s.cameras] == names
    # the renders are the stage-1 NeRF seen from those cameras, the images their translation
    system, cfg = fresh_system(threestudio, stage1)
    system.load_state_dict(state_dict(stage1 / "ckpts" / "last.ckpt")["state_dict"])
    system.eval()
    system.material.ambient_only = False  # stage 2's diffuse shading
    batch = cameras.select_cameras(orbit, 2)
    batch["rays_o"], batch["rays_d"] = cameras.camera_rays(batch)
    with torch.no_grad():
        render = system(batch)["comp_rgb"][0]
    assert (render - s.renders[2]).abs().max() < 1.5 / 255  # PNG quantisation
    assert (s.images - s.renders).abs().mean() > 1e-2  # img2img changed them


def test_stage3_trains_sds_plus_reconstruction_from_the_stage1_weights(threestudio, project, threestudio_root,
                                                                      tiny_sd_path, dreambooth_run, stage1, stage2):
    stage1_ckpt = stage1 / "ckpts" / "last.ckpt"
    trial = launch(project, threestudio_root, "stage3", "--train", "trainer.max_steps=1",
                   f"data.pseudo_views_dir={stage2}", f"system.weights={stage1_ckpt}",
                   *model_args(tiny_sd_path, dreambooth_run / "checkpoints" / "full"))
    m = metrics(trial)
    for key in ("train/loss_sds", "train/loss_rec", "train/loss_rec_mask"):
        assert math.isfinite(m[key]), key
    assert m["train_params/lambda_rec"] == 1000.0
    # started from stage 1: one Adam step (lr 0.01) away from its weights, not from a fresh init
    before = state_dict(stage1_ckpt)["state_dict"]
    after = state_dict(trial / "ckpts" / "last.ckpt")["state_dict"]
    geometry = [k for k in before if k.startswith("geometry.") and before[k].is_floating_point()]
    assert max((after[k] - before[k]).abs().max().item() for k in geometry) < 0.05
    assert any(not torch.equal(after[k], before[k]) for k in geometry)


def test_baseline_trains_plain_sds_with_the_full_model(threestudio, project, threestudio_root, tiny_sd_path,
                                                       dreambooth_run):
    trial = launch(project, threestudio_root, "stage1", "--train", "trainer.max_steps=1",
                   *model_args(tiny_sd_path, dreambooth_run), name="dreamboothfusion-baseline")
    m = metrics(trial)
    assert math.isfinite(m["train/loss_sds"]) and "train/loss_rec" not in m
    from threestudio.utils.config import load_config

    parsed = load_config(str(trial / "configs" / "parsed.yaml"))
    assert parsed.system.guidance.checkpoint_name == "full"
    assert parsed.system.geometry.pos_encoding_config.otype == "ProgressiveBandHashGrid"  # the real NeRF
    assert state_dict(trial / "ckpts" / "last.ckpt")["global_step"] == 1


def test_stage3_without_pseudo_views_says_what_to_set(threestudio, stage1):
    system, cfg = fresh_system(threestudio, stage1)
    system.cfg.loss.lambda_rec = 1000.0
    with pytest.raises(ValueError, match="data.pseudo_views_dir"):
        system.training_step({"rays_o": None}, 0)


def test_stage2_is_not_a_training_run(threestudio, stage1):
    system, cfg = fresh_system(threestudio, stage1)
    system.cfg.stage = 2
    with pytest.raises(ValueError, match="--test resume="):
        system.on_fit_start()


def test_stage3_reconstruction_is_weighted_by_the_dilated_pseudo_view_mask(threestudio, stage1, monkeypatch):
    system, cfg = fresh_system(threestudio, stage1)
    render = torch.zeros(1, 8, 8, 3)
    monkeypatch.setattr(system.renderer, "forward", lambda **kw: {"comp_rgb": render, "opacity": torch.full((1, 8, 8, 1), 0.5)})
    mask = torch.zeros(1, 8, 8, 1)
    mask[:, 2:5, 2:5] = 1.0
    target = torch.ones(1, 8, 8, 3)
    target[:, 1:6, 1:6] = 0.0  # matches the render on the mask grown by one pixel, differs outside it
    pseudo = {"rays_o": None, "rays_d": None, "light_positions": None, "rgb": target, "mask": mask}
    system.cfg.rec_mask_weighting, system.cfg.rec_mask_dilation = True, 1
    assert system.reconstruction_losses(pseudo)["loss_rec"].item() == 0.0
    system.cfg.rec_mask_dilation = 2  # grown by two: the differing ring counts, the rest of the background not
    ring = 7 * 7 - 5 * 5
    assert system.reconstruction_losses(pseudo)["loss_rec"].item() == pytest.approx(ring / 49, rel=1e-5)
    system.cfg.rec_mask_weighting = False  # every pixel
    assert system.reconstruction_losses(pseudo)["loss_rec"].item() == pytest.approx((64 - 25) / 64, rel=1e-5)
    del pseudo["mask"]
    system.cfg.rec_mask_weighting = True
    with pytest.raises(ValueError, match="rec_mask_weighting"):
        system.reconstruction_losses(pseudo)


def test_stage2_filters_its_translations_and_can_translate_with_the_scene_prompt(
        threestudio, project, threestudio_root, tiny_sd_path, dreambooth_run, stage1):
    import json

    from threestudio_dreambooth3d.core.pseudo_views import read_pseudo_views

    out = project / "pseudo_views_filtered"
    launch(project, threestudio_root, "stage2", "--test",
           f"resume={stage1 / 'ckpts' / 'last.ckpt'}", f"system.pseudo_views_dir={out}",
           f"system.prompt_processor.prompt={SCENE_PROMPT}", "system.translation_prompt=scene",
           "system.pseudo_view_filter.keep_fraction=0.5", "system.pseudo_view_filter.min_views=2",
           *model_args(tiny_sd_path, dreambooth_run))
    report = json.loads((out / "filter.json").read_text())
    kept = [v["index"] for v in report["views"] if v["keep"]]
    assert report["total"] == 4 and len(kept) == 2
    s = read_pseudo_views(out)  # what the multi-view finetune and stage 3 read: the kept views only
    assert s.names == [f"view_{i:03d}" for i in kept]
    assert len(list((out / "dropped").glob("view_*.png"))) == 2
    # the worst render differences were dropped
    diffs = sorted(v["render_difference"] for v in report["views"])
    assert max(v["render_difference"] for v in report["views"] if v["keep"]) <= diffs[1]
    assert all(c.startswith(SCENE_PROMPT) for c in s.captions)  # translated with the scene's context


def test_stage3_reconstruction_weight_follows_a_schedule(threestudio, project, threestudio_root, tiny_sd_path,
                                                         dreambooth_run, stage1, stage2):
    trial = launch(project, threestudio_root, "stage3", "--train", "trainer.max_steps=2",
                   f"data.pseudo_views_dir={stage2}", f"system.weights={stage1 / 'ckpts' / 'last.ckpt'}",
                   "system.loss.lambda_rec=[0,1000.0,10.0,1]", "tag=schedule",
                   *model_args(tiny_sd_path, dreambooth_run / "checkpoints" / "full")).parent / "schedule"
    rows = list(csv.DictReader(open(trial / "csv_logs" / "version_0" / "metrics.csv")))
    weights = [float(r["train_params/lambda_rec"]) for r in rows if r.get("train_params/lambda_rec")]
    assert weights == [1000.0, 10.0]  # decayed from step 0 to step 1
