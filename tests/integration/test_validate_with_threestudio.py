"""`run` resolves every stage config and --set override with threestudio's loader before any
work: unknown keys, wrong types, missing files and unknown Lightning options name stage and key."""
import sys
from pathlib import Path

import pytest

from threestudio_dreambooth3d.pipeline.context import RunContext
from threestudio_dreambooth3d.pipeline.presets import get_preset
from threestudio_dreambooth3d.pipeline.validate import StageSpec, stage_specs, validate_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def specs(threestudio, threestudio_root, tmp_path):
    ctx = RunContext(out=tmp_path / "out", subject=tmp_path, class_noun="dog", prompt="a sks dog",
                     preset=get_preset("smoke"), model=str(tmp_path / "tiny"), threestudio_root=threestudio_root,
                     configs_dir=REPO / "configs")
    return {s.step: s for s in stage_specs(ctx)}


def _with(spec: StageSpec, *overrides: str) -> StageSpec:
    return StageSpec(spec.step, spec.config, spec.dotlist + list(overrides), list(overrides))


def test_the_pipeline_configs_load(specs):
    for spec in specs.values():
        assert validate_stage(spec) == [], spec.step
    # the switches of docs/PSEUDO_VIEWS.md are valid overrides
    assert validate_stage(_with(specs["stage2"], "system.translation_prompt=scene",
                                "system.pseudo_view_filter.enabled=false")) == []
    assert validate_stage(_with(specs["stage3"], "system.loss.lambda_rec=[0,1000.0,100.0,5000]")) == []


@pytest.mark.parametrize("step, override, expected", [
    ("stage1", "system.no_such_key=1", "stage1: config key system.no_such_key (from --set): unknown key"),
    ("stage2", "system.guidance.translation_strength=abc", "stage2: config key system.guidance.translation_strength"),
    ("stage3", "system.geometry.radius=big", "stage3: config key system.geometry.radius"),
    ("stage1", "trainer.max_stepz=3", "stage1: config key trainer.max_stepz (from --set): not an option"),
    ("stage1", "trainer.max_steps=abc", "stage1: config key trainer.max_steps (from --set): 'abc' is not of the type "
                                        "Trainer expects (int)"),
    ("stage3", "checkpoint.every_n_train_steps=often", "stage3: config key checkpoint.every_n_train_steps (from --set): "
                                                       "'often' is not of the type"),
    ("export", "system.exporter.bad_key=2", "export: config key system.exporter.bad_key (from --set): unknown key"),
    ("stage1", "data.no_such=1", "stage1: config key data"),
    ("stage3", "system.weights=/no/such/stage1.ckpt", "stage3: --set system.weights=/no/such/stage1.ckpt: no such file"),
    ("stage1", "system.guidance_type=no-such-guidance", "'no-such-guidance' is not a registered threestudio guidance"),
    ("stage2", "system.pseudo_view_filter.keepfraction=0.5",
     "stage2: config key system.pseudo_view_filter: pseudo_view_filter.keepfraction is not an option"),
    ("stage2", "system.pseudo_view_filter.keep_fraction=0", "pseudo_view_filter.keep_fraction must be in (0, 1]"),
])
def test_bad_override_names_stage_and_key(specs, step, override, expected):
    errors = validate_stage(_with(specs[step], override))
    assert any(e.startswith(expected) or expected in e for e in errors), errors


def test_run_stops_before_the_finetune(threestudio_root, tmp_path, monkeypatch, capsys):
    from threestudio_dreambooth3d.cli import main

    out = tmp_path / "out"
    monkeypatch.setenv("THREESTUDIO_ROOT", str(threestudio_root))
    code = main(["run", "--preset", "smoke", "--subject", str(REPO / "examples" / "red_toy"), "--class-noun", "toy",
                 "--prompt", "a sks toy", "--out", str(out), "--set", "stage1:system.no_such_key=1"])
    err = capsys.readouterr().err
    assert code == 2 and "stage1: config key system.no_such_key" in err
    assert not (out / "finetune").exists() and not (out / "models").exists()  # nothing built


def test_a_prompt_reaches_threestudios_prompt_processor_literally(threestudio, threestudio_root, tmp_path):
    """`${...}` in the prompt is text, not an OmegaConf interpolation (an env variable, a crash)."""
    import tempfile

    from threestudio.utils.config import load_config, parse_structured

    prompt = "a sks toy in ${oc.env:HOME} ${nope}"
    ctx = RunContext(out=tmp_path / "out", subject=tmp_path, class_noun="dog", prompt=prompt,
                     preset=get_preset("smoke"), model=str(tmp_path / "tiny"), threestudio_root=threestudio_root,
                     configs_dir=REPO / "configs")
    for spec in stage_specs(ctx):
        if spec.step == "export":
            continue
        assert validate_stage(spec) == [], spec.step
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(spec.config, cli_args=list(spec.dotlist), n_gpus=1, exp_root_dir=tmp)
        cls = threestudio.find(cfg.system.prompt_processor_type)
        pp_cfg = parse_structured(cls.Config, cfg.system.prompt_processor)
        processor = cls.__new__(cls)  # no model: only the prompt's way in is under test
        assert processor.preprocess_prompt(pp_cfg.prompt) == prompt, spec.step
