"""DreamBooth's memory/speed options are really applied: precision, checkpointing, optimizer, state saves."""
import sys
import types

import pytest
import torch

from threestudio_dreambooth3d.core import train_memory as mem
from threestudio_dreambooth3d.core import train_options as opts
from threestudio_dreambooth3d.core.dreambooth import DreamBoothConfig, DreamBoothTrainer
from threestudio_dreambooth3d.errors import ConfigError, MissingDependencyError


def trainer(tiny_sd_path, subject_dir, out, **kw):
    base = dict(pretrained_model=str(tiny_sd_path), subject_dir=str(subject_dir), class_noun="dog",
                output_dir=str(out), prior_preservation=False, max_steps=2, checkpoint_steps={"full": 2},
                learning_rate=1e-3, lora_rank=4, device="cpu")
    base.update(kw)
    return DreamBoothTrainer(DreamBoothConfig(**base))


# -- precision ----------------------------------------------------------------------------------

@pytest.mark.parametrize("choice, device, bf16, expected", [
    ("auto", "cuda", True, torch.bfloat16),
    ("auto", "cuda", False, torch.float16),
    ("auto", "cpu", False, None),
    ("no", "cuda", True, None),
    ("fp16", "cuda", True, torch.float16),
    ("bf16", "cuda", False, torch.bfloat16),  # asked for explicitly: as asked
    ("bf16", "cpu", False, torch.bfloat16),
])
def test_autocast_dtype_selection(choice, device, bf16, expected):
    assert opts.select_amp_dtype(choice, device, bf16) is expected


def test_fp16_on_a_cpu_is_refused_before_any_work(tiny_sd_path, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        # the subject folder does not even exist: precision is checked first
        trainer(tiny_sd_path, tmp_path / "no_photos", tmp_path / "out", mixed_precision="fp16")


def test_bf16_autocast_runs_the_unet_in_bf16_and_keeps_trained_weights_fp32(tiny_sd_path, subject_dir, tmp_path):
    t = trainer(tiny_sd_path, subject_dir, tmp_path, mixed_precision="bf16")
    seen = []
    t.components.unet.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                                     o.sample.dtype)))
    t.train_step(torch.Generator().manual_seed(0))
    assert seen == [(True, torch.bfloat16, torch.bfloat16)]
    trained = [p for g in t.optimizer.param_groups for p in g["params"]]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert all(v.dtype == torch.float32 for s in t.optimizer.state.values() for v in s.values() if v.dim() > 0)
    # the frozen rest is stored in the autocast dtype, as diffusers' example does
    frozen = [p for p in t.components.unet.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert t.components.vae.dtype == torch.bfloat16


def test_fp32_by_default_on_a_cpu(tiny_sd_path, subject_dir, tmp_path):
    t = trainer(tiny_sd_path, subject_dir, tmp_path)
    assert t.amp_dtype is None and all(p.dtype == torch.float32 for p in t.components.unet.parameters())


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_bf16_step_loss_stays_close_to_fp32(tiny_sd_path, subject_dir, tmp_path, mode):
    losses = {}
    for mp in ("no", "bf16"):
        t = trainer(tiny_sd_path, subject_dir, tmp_path / mp, mixed_precision=mp, mode=mode)
        losses[mp] = t.train_step(torch.Generator().manual_seed(0))["loss"]
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05), losses
    assert losses["bf16"] != losses["no"]  # it did run in another precision


# -- gradient checkpointing ---------------------------------------------------------------------

@pytest.mark.parametrize("mode, te, flag, unet_on, te_on", [
    ("full", False, None, True, False),  # on by default in full mode
    ("lora", False, None, False, False),
    ("full", True, None, True, True),
    ("full", False, False, False, False),  # --no-gradient-checkpointing
    ("lora", True, True, True, True),
])
def test_gradient_checkpointing_flags(tiny_sd_path, subject_dir, tmp_path, mode, te, flag, unet_on, te_on):
    t = trainer(tiny_sd_path, subject_dir, tmp_path, mode=mode, train_text_encoder=te, gradient_checkpointing=flag)
    assert t.components.unet.is_gradient_checkpointing is unet_on
    assert t.components.text_encoder.is_gradient_checkpointing is te_on


def test_checkpointed_lora_step_gives_the_same_gradients(tiny_sd_path, subject_dir, tmp_path):
    grads = {}
    for flag in (False, True):
        t = trainer(tiny_sd_path, subject_dir, tmp_path / str(flag), train_text_encoder=True, gradient_checkpointing=flag)
        t.loss(t.sample_batch(torch.Generator().manual_seed(0)), torch.Generator().manual_seed(1))["loss"].backward()
        grads[flag] = [[p.grad for p in g["params"]] for g in t.optimizer.param_groups]  # unet, text encoder
    # the LoRA weights of both modules still get gradients through recomputed layers (B starts at
    # zero, so A's gradients are zero at the first step: check that some are not)
    assert len(grads[True]) == 2 and all(any(g is not None and g.abs().sum() > 0 for g in group) for group in grads[True])
    for a, b in zip(sum(grads[False], []), sum(grads[True], []), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-6)


# -- optimizer ----------------------------------------------------------------------------------

def test_adamw_by_default(tiny_sd_path, subject_dir, tmp_path):
    assert type(trainer(tiny_sd_path, subject_dir, tmp_path).optimizer) is torch.optim.AdamW


def test_8bit_adam_uses_bitsandbytes(tiny_sd_path, subject_dir, tmp_path, monkeypatch):
    class AdamW8bit(torch.optim.AdamW):
        pass

    bnb = types.ModuleType("bitsandbytes")
    bnb.optim = types.SimpleNamespace(AdamW8bit=AdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", bnb)
    t = trainer(tiny_sd_path, subject_dir, tmp_path, use_8bit_adam=True)
    assert type(t.optimizer) is AdamW8bit
    assert t.optimizer.param_groups[0]["params"] == [p for p in t.components.unet.parameters() if p.requires_grad]


def test_8bit_adam_without_bitsandbytes_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"threestudio-dreambooth3d\[8bit\]"):
        opts.make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], use_8bit_adam=True)


# -- state saves --------------------------------------------------------------------------------

def test_state_is_saved_by_time_and_at_the_end():
    policy = opts.StateSavePolicy(every_s=600, start=0.0)
    assert not policy.due(step=5, last_step=100, now=599)
    assert policy.due(step=6, last_step=100, now=600)
    policy.saved(600)
    assert not policy.due(step=7, last_step=100, now=1000)
    assert policy.due(step=100, last_step=100, now=1001)  # the end, whatever the time


def test_a_short_run_writes_one_state_at_the_end(tiny_sd_path, subject_dir, tmp_path, monkeypatch):
    t = trainer(tiny_sd_path, subject_dir, tmp_path, max_steps=3, checkpoint_steps={"partial": 1, "full": 3})
    written = []
    monkeypatch.setattr(t, "_save_state", lambda step, *a: written.append(step))
    t.train()
    assert written == [3]  # not at each named checkpoint nor every N steps: 10 minutes had not passed


def test_finetune_cli_options_reach_the_trainer_config(tiny_sd_path, subject_dir, tmp_path, capsys):
    from threestudio_dreambooth3d.cli import main
    from threestudio_dreambooth3d.finetune_options import FinetuneOptions

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "--use-8bit-adam" in capsys.readouterr().out
    base = ["--subject", str(subject_dir), "--class-noun", "dog", "--out", str(tmp_path)]
    default = FinetuneOptions.parse(base).dreambooth_config()
    assert (default.mixed_precision, default.gradient_checkpointing, default.use_8bit_adam) == ("auto", None, False)
    cfg = FinetuneOptions.parse(base + ["--use-8bit-adam", "--no-gradient-checkpointing", "--mixed-precision", "bf16",
                                        "--save-state-minutes", "2.5"]).dreambooth_config()
    assert (cfg.mixed_precision, cfg.gradient_checkpointing, cfg.use_8bit_adam, cfg.save_state_minutes) == (
        "bf16", False, True, 2.5)


def test_tf32_is_enabled_for_cuda_only():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:  # torch's flag objects are not monkeypatch-able (no plain attributes): set and restore by hand
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert not opts.enable_tf32(torch.device("cpu")) and not torch.backends.cuda.matmul.allow_tf32
        assert opts.enable_tf32(torch.device("cuda"))  # only flags: no CUDA call is made
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
