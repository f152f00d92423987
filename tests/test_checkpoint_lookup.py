"""What the guidance and the prompt processor compute before loading a model, without threestudio:
which checkpoint a config names, the base-model warning, the weights' dtype and the SDS weighting
check (the text encoder's cache key: test_run_folder.py)."""
from __future__ import annotations

import json

import pytest
import torch

from threestudio_dreambooth3d.core import sds
from threestudio_dreambooth3d.core.checkpoints import checkpoint_base_mismatch, resolve_checkpoint
from threestudio_dreambooth3d.core.sd_models import weights_dtype
from threestudio_dreambooth3d.errors import CheckpointNotFoundError


def _checkpoint(folder, **meta):
    folder.mkdir(parents=True)
    weights = {"unet": [{"kind": "lora", "file": "unet.safetensors"}], **meta.pop("weights", {})}
    (folder / "dreambooth.json").write_text(json.dumps({"base_model": "org/sd", "weights": weights, **meta}))
    return folder


def test_a_config_names_a_checkpoint_folder_or_a_run_plus_a_name(tmp_path):
    run = tmp_path / "finetune"
    full, partial = _checkpoint(run / "checkpoints" / "full"), _checkpoint(run / "checkpoints" / "partial")
    assert resolve_checkpoint(str(run), "full") == full
    assert resolve_checkpoint(str(partial), "ignored") == partial  # a checkpoint folder is itself
    assert resolve_checkpoint(None) is None and resolve_checkpoint("", "full") is None
    with pytest.raises(CheckpointNotFoundError, match=r"named 'multiview'.*checkpoint_name \(available: full, partial\)"):
        resolve_checkpoint(str(run), "multiview")
    with pytest.raises(CheckpointNotFoundError, match="No DreamBooth checkpoint at"):
        resolve_checkpoint(str(tmp_path / "nowhere"))


def test_a_checkpoint_of_another_base_model_is_named(tmp_path):
    ckpt = _checkpoint(tmp_path / "full")
    assert checkpoint_base_mismatch(ckpt, "org/sd") is None and checkpoint_base_mismatch(None, "x") is None
    warning = checkpoint_base_mismatch(ckpt, "other/sd")
    assert "trained on org/sd" in warning and "guidance loads other/sd" in warning


def test_half_precision_weights_only_on_cuda_and_unknown_weightings_fail_early():
    assert weights_dtype(True, "cuda:0") == torch.float16
    assert weights_dtype(True, "cpu") == weights_dtype(False, "cuda") == torch.float32
    sds.check_weighting("fantasia3d")
    with pytest.raises(ValueError, match="weighting_strategy='sjc': expected one of sds, uniform, fantasia3d"):
        sds.check_weighting("sjc")
