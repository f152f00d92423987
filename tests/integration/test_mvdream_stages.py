"""The MVDream stage config and the mix config train through threestudio's own launch.py (one step,
CPU override set, tiny models): 4-view batches reach the multi-view guidance; the mix logs a loss
per prior and weighs each by its own lambda."""
import math

import pytest
import torch

from test_stages import launch, metrics, project, state_dict  # noqa: F401 (project is a fixture)


@pytest.fixture(scope="module")
def tiny_mv(tmp_path_factory):
    from threestudio_dreambooth3d.tiny_models.mvdream import build_tiny_mvdream

    return build_tiny_mvdream(tmp_path_factory.mktemp("models") / "tiny-mvdream")


def _mv(stage: str):
    """The CPU override set of ``stage`` is launch()'s; these are the 4-view stages' additions."""
    from threestudio_dreambooth3d.pipeline import smoke

    return smoke.overrides("mvdream")


def test_mvdream_stage1_trains_on_4_view_batches(threestudio, project, threestudio_root, tiny_mv, monkeypatch):
    from threestudio_dreambooth3d.core import mvsds

    seen = []
    real = mvsds.multiview_score_distillation

    def spy(unet, vae, rgb, text_embeddings, camera, *a, **kw):
        seen.append((rgb.shape[0], None if camera is None else camera.shape))
        return real(unet, vae, rgb, text_embeddings, camera, *a, **kw)

    monkeypatch.setattr(mvsds, "multiview_score_distillation", spy)
    trial = launch(project, threestudio_root, "stage1", "--train", "trainer.max_steps=1", *_mv("stage1"),
                   f"system.guidance.pretrained_model_name_or_path={tiny_mv}", "system.guidance.checkpoint=null",
                   name="dreambooth3d-mvdream-stage1")
    assert state_dict(trial / "ckpts" / "last.ckpt")["global_step"] == 1
    m = metrics(trial)
    assert math.isfinite(m["train/loss_sds"]) and m["train/loss_sds"] > 0
    assert seen and seen[0] == (4, torch.Size([4, 16]))  # one object of 4 views, each with its camera


@pytest.mark.parametrize("w2d, wmv", [(0.1, 1.0), (0.0, 1.0)])
def test_mix_config_trains_with_a_weight_per_prior(threestudio, project, threestudio_root, tiny_sd_path, tiny_mv,
                                                   w2d, wmv):
    trial = launch(project, threestudio_root, "stage1", "--train", "trainer.max_steps=1", *_mv("stage1"),
                   f"system.guidance.sd_guidance.pretrained_model_name_or_path={tiny_sd_path}",
                   "system.guidance.sd_guidance.checkpoint=null",
                   f"system.guidance.mv_guidance.pretrained_model_name_or_path={tiny_mv}",
                   "system.guidance.mv_guidance.checkpoint=null",
                   f"system.loss.lambda_sds_2d={w2d}", f"system.loss.lambda_sds_mv={wmv}",
                   f"tag=w{w2d}", name="mix/dreambooth3d-mvdream-mix")
    trial = trial.parent / f"w{w2d}"
    m = metrics(trial)
    for key in ("train/loss_sds_2d", "train/loss_sds_mv"):
        assert math.isfinite(m[key]) and m[key] > 0, key
    assert (m["train_params/lambda_sds_2d"], m["train_params/lambda_sds_mv"]) == pytest.approx((w2d, wmv))
