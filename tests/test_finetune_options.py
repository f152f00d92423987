"""``dreambooth3d finetune``'s options (finetune_options.py): the CLI built from the dataclass,
every option reaching the trainer's config, and the pipeline reading a finetune command's options."""
from __future__ import annotations

from dataclasses import fields

import pytest

from threestudio_dreambooth3d import cli
from threestudio_dreambooth3d.errors import ConfigError
from threestudio_dreambooth3d.finetune_options import FinetuneOptions, continuation_args

REQUIRED = ["--subject", "photos", "--class-noun", "dog", "--out", "out"]

# every option with a value other than its default, and what the trainer's config must hold
NON_DEFAULT = [
    ("--model", "/models/sd", "pretrained_model", "/models/sd"),
    ("--base-model", "mvdream", "base_model", "mvdream"),  # an MVDreamBoothConfig
    ("--param-preservation-weight", "0.5", "param_preservation_weight", 0.5),
    ("--extra-views", "pseudo_views", "extra_views", "pseudo_views"),  # mvdream: pseudo views as 4-view sets
    ("--identifier", "zwx", "identifier", "zwx"),
    ("--instance-prompt", "a zwx dog", "instance_prompt", "a zwx dog"),
    ("--steps", "40", "max_steps", 40),
    ("--checkpoints", "early=10,late=40", "checkpoint_steps", {"early": 10, "late": 40}),
    ("--mode", "full", "mode", "full"),
    ("--lora-rank", "4", "lora_rank", 4),
    ("--lora-alpha", "2.5", "lora_alpha", 2.5),
    ("--lr", "0.003", "learning_rate", 0.003),
    ("--train-text-encoder", None, "train_text_encoder", True),
    ("--no-prior", None, "prior_preservation", False),
    ("--prior-weight", "0.25", "prior_loss_weight", 0.25),
    ("--num-class-images", "7", "num_class_images", 7),
    ("--class-images-dir", "cache", "class_images_dir", "cache"),
    ("--batch-size", "3", "batch_size", 3),
    ("--resolution", "64", "resolution", 64),
    ("--init-checkpoint", "ckpt", "init_checkpoint", "ckpt"),
    ("--mixed-precision", "bf16", "mixed_precision", "bf16"),
    ("--gradient-checkpointing", None, "gradient_checkpointing", True),
    ("--use-8bit-adam", None, "use_8bit_adam", True),
    ("--save-state-minutes", "2.5", "save_state_minutes", 2.5),
    ("--seed", "5", "seed", 5),
    ("--device", "cpu", "device", "cpu"),
]


def _argv(pairs):
    argv = list(REQUIRED)
    for flag, value, *_ in pairs:
        argv += [flag] if value is None else [flag, value]
    return argv


@pytest.fixture
def trained(monkeypatch):
    """The DreamBoothConfig each ``dreambooth3d finetune`` hands the trainer (nothing is trained)."""
    from types import SimpleNamespace

    from threestudio_dreambooth3d.core import dreambooth

    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        return SimpleNamespace(checkpoints={})

    monkeypatch.setattr(dreambooth, "train_dreambooth", fake_train)
    return seen


def test_every_finetune_option_reaches_the_trainer_through_the_cli(trained, tmp_path):
    extra = tmp_path / "views"
    extra.mkdir()
    (extra / "v0.png").write_bytes(b"")  # listed by name; the caption file is what is read
    (extra / "v0.txt").write_text("a zwx dog, back view\n")
    assert cli.main(["finetune", *_argv(NON_DEFAULT), "--extra-images", str(extra)]) == 0
    cfg = trained[-1]
    for flag, _, key, want in NON_DEFAULT:
        assert getattr(cfg, key) == want, flag
    assert (cfg.subject_dir, cfg.class_noun, cfg.output_dir) == ("photos", "dog", "out")
    assert cfg.extra_images == [(str(extra / "v0.png"), "a zwx dog, back view")]
    # the table covers every option of the dataclass (a new one needs a row)
    flags = {flag for flag, *_ in NON_DEFAULT} | {"--subject", "--class-noun", "--out", "--extra-images"}
    rendered = {f.metadata["flag"] or "--" + f.name.replace("_", "-") for f in fields(FinetuneOptions)}
    assert rendered == flags


def test_defaults_give_the_trainer_its_documented_choices(trained):
    assert cli.main(["finetune", *REQUIRED]) == 0
    cfg = trained[-1]
    assert cfg.prior_preservation and cfg.prior_loss_weight == 1.0 and cfg.lora_alpha is None
    assert cfg.checkpoint_steps == {"partial": 200, "full": 800} and cfg.mode == "lora"


def test_finetune_help_shows_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert "--lora-alpha" in text and "alpha/rank" in text
    assert all(flag in text for flag, *_ in NON_DEFAULT)


def test_later_flags_win_and_a_continuation_keeps_what_the_first_run_trained():
    opts = FinetuneOptions.parse(REQUIRED + ["--mode", "lora", "--mode=full", "--train-text-encoder"])
    assert opts.mode == "full" and opts.train_text_encoder
    assert continuation_args(opts) == ["--mode", "full", "--train-text-encoder"]
    assert continuation_args(FinetuneOptions.parse(REQUIRED)) == ["--mode", "lora"]
    with pytest.raises(ConfigError, match="--mode"):  # parse raises (the pipeline checks options up front)
        FinetuneOptions.parse(REQUIRED + ["--mode", "half"])
