"""What a finetune costs in memory and disk (core/train_memory.py), and doctor's disk check sized from it."""
from collections import namedtuple

import pytest
import torch

from threestudio_dreambooth3d.core import train_memory as mem
from threestudio_dreambooth3d.environment import doctor

GiB = 2**30


# -- what it costs ------------------------------------------------------------------------------

def test_sd21_full_finetune_state_is_about_10_gib_and_8bit_adam_shrinks_it():
    full = mem.training_bytes(mem.SD21_BASE_PARAMS, "full", False, amp=True, use_8bit_adam=False)
    assert full.state_file / GiB == pytest.approx(9.68, abs=0.01)  # 866M fp32 params + 2 fp32 moments
    full8 = mem.training_bytes(mem.SD21_BASE_PARAMS, "full", False, amp=True, use_8bit_adam=True)
    assert full8.optimizer * 4 == full.optimizer
    lora = mem.training_bytes(mem.SD21_BASE_PARAMS, "lora", False, amp=True, use_8bit_adam=False,
                               lora_params=mem.SD21_BASE_LORA16_PARAMS)
    assert lora.trained_params == mem.SD21_BASE_LORA16_PARAMS["unet"] and lora.state_file < 0.1 * GiB
    # frozen weights in half precision: the whole base model, 2 bytes a parameter
    assert lora.weights == pytest.approx(2 * sum(mem.SD21_BASE_PARAMS.values()), rel=0.01)


@pytest.mark.slow
def test_sd21_parameter_counts_match_the_real_configs():
    from threestudio_dreambooth3d.core import lora
    from threestudio_dreambooth3d.tiny_models.sd import sd21_base_components

    with torch.device("meta"):
        comps = sd21_base_components()
    assert {k: sum(p.numel() for p in comps[k].parameters()) for k in mem.SD21_BASE_PARAMS} == mem.SD21_BASE_PARAMS
    for name, targets in (("unet", lora.UNET_TARGETS), ("text_encoder", lora.TEXT_ENCODER_TARGETS)):
        lora.add_lora(comps[name], 16, 16, targets)
        n = sum(p.numel() for k, p in comps[name].named_parameters() if "lora_" in k)
        assert n == mem.SD21_BASE_LORA16_PARAMS[name]




def test_parameters_are_counted_from_safetensors_headers(tiny_sd_path):
    from threestudio_dreambooth3d.core.sd_models import load_sd_components

    comps = load_sd_components(tiny_sd_path)
    counts = mem.folder_params(tiny_sd_path)
    assert counts == {name: sum(t.numel() for t in getattr(comps, name).state_dict().values())
                      for name in ("unet", "text_encoder", "vae")}


@pytest.mark.parametrize("args, state_gib, checkpoint_gib", [
    ([], 0.04, 0.0124),  # LoRA rank 16 on the UNet
    (["--mode=full"], 9.68, 3.23),  # 866M fp32 weights + 2 fp32 moments; a checkpoint: the fp32 UNet
    (["--mode=full", "--use-8bit-adam"], 4.84, 3.23),
    (["--mode=full", "--train-text-encoder"], 13.48, 4.49),
])
def test_default_run_disk_need_follows_the_finetune_mode(args, state_gib, checkpoint_gib):
    need, how = doctor.run_disk_need("default", "stabilityai/stable-diffusion-2-1-base", args, cached=lambda m: None)
    assert "SD 2.1 base sizes" in how and f"{state_gib:.2f} GiB" in how, how
    # three states at the peak (two kept, one being replaced) + 3 checkpoints + the stages' outputs
    assert need / GiB == pytest.approx(3 * state_gib + 3 * checkpoint_gib + 1, rel=0.01)


def test_disk_need_counts_a_local_model_folder(tiny_sd_path):
    need, how = doctor.run_disk_need("default", str(tiny_sd_path), ["--mode=full"])
    assert str(tiny_sd_path) in how and need < 1.1 * GiB  # a tiny model's states are small


def test_disk_row_says_how_much_the_run_needs(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: usage(100 << 30, 80 << 30, 20 << 30))
    rows = {r.name: r for r in doctor.run_checks("default", model="stabilityai/stable-diffusion-2-1-base", out=tmp_path,
                                                 gpu=doctor.GpuInfo(False), finetune_args=["--mode=full"])}
    disk = rows["free disk"]
    assert disk.status == doctor.MISSING and "needs about 39.7 GiB" in disk.detail and "--mode full" in disk.detail, disk
    lora = doctor.run_checks("default", model="stabilityai/stable-diffusion-2-1-base", out=tmp_path, gpu=doctor.GpuInfo(False))
    assert next(r for r in lora if r.name == "free disk").status == doctor.OK
