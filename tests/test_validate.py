"""What `run` hands threestudio's loader before any work (the loading itself: tests/integration/test_validate_with_threestudio.py)."""
from pathlib import Path

from threestudio_dreambooth3d.pipeline.context import RunContext
from threestudio_dreambooth3d.pipeline.presets import get_preset
from threestudio_dreambooth3d.pipeline.validate import StageSpec, missing_files, stage_specs

REPO = Path(__file__).resolve().parents[1]


def _ctx(tmp_path, overrides, method="dreambooth3d"):
    root = tmp_path / "threestudio"
    (root / "threestudio").mkdir(parents=True)
    (root / "threestudio" / "__init__.py").write_text("")
    (root / "launch.py").write_text("")
    return RunContext(out=tmp_path / "out", subject=tmp_path, class_noun="dog", prompt="a sks dog",
                      preset=get_preset("smoke"), model=str(tmp_path / "tiny"), threestudio_root=root,
                      configs_dir=REPO / "configs", overrides=overrides, method=method)


def test_every_threestudio_step_is_checked_with_its_own_command_line(tmp_path):
    ctx = _ctx(tmp_path, {"stage1": ["system.no_such_key=1"], "export": ["system.exporter.texture_size=32"]})
    specs = {s.step: s for s in stage_specs(ctx)}
    assert list(specs) == ["stage1", "stage2", "stage3", "export"]
    assert specs["stage1"].config == str(REPO / "configs" / "dreambooth3d-stage1.yaml")  # the real config
    assert "system.no_such_key=1" in specs["stage1"].dotlist and specs["stage1"].user_overrides == ["system.no_such_key=1"]
    assert any(d.startswith("system.prompt_processor.prompt=") for d in specs["stage2"].dotlist)
    # the export loads stage 3's parsed config, not there yet: stage 3's config + dotlist, then the export's
    assert specs["export"].config == specs["stage3"].config
    assert specs["export"].dotlist[: len(specs["stage3"].dotlist)] == specs["stage3"].dotlist
    assert specs["export"].dotlist[-1] == "system.exporter.texture_size=32"


def test_a_baseline_method_checks_its_own_steps_only(tmp_path):
    ctx = _ctx(tmp_path, {"baseline": ["system.no_such_key=1"]}, method="latentnerf")
    specs = {s.step: s for s in stage_specs(ctx)}
    assert list(specs) == ["baseline", "export"]  # not the three DreamBooth3D stages it never runs
    assert specs["baseline"].config == str(REPO / "configs" / "latentnerf-dreambooth-baseline.yaml")
    assert specs["baseline"].user_overrides == ["system.no_such_key=1"]
    assert specs["export"].config == specs["baseline"].config  # the baseline's parsed config stands in


def test_user_file_overrides_must_exist(tmp_path):
    there = tmp_path / "s1.ckpt"
    there.write_bytes(b"x")
    spec = StageSpec("stage3", "c.yaml", [], [f"system.weights={tmp_path / 'nope.ckpt'}", f"resume={there}",
                                             f"system.guidance.checkpoint={tmp_path / 'no-checkpoint'}",
                                             "system.guidance.guidance_scale=7", "data.image_path=${oc.env:X}"])
    assert missing_files(spec) == [f"stage3: --set system.weights={tmp_path / 'nope.ckpt'}: no such file or folder",
                                   f"stage3: --set system.guidance.checkpoint={tmp_path / 'no-checkpoint'}: "
                                   "no such file or folder"]


def test_a_threestudio_that_cannot_load_is_reported_with_its_error_not_its_warnings(tmp_path):
    import dataclasses
    import sys

    import pytest

    from threestudio_dreambooth3d.pipeline.validate import ConfigValidationError, check_stage_configs

    # an interpreter whose threestudio import fails after a screen of warnings and import frames
    fake = tmp_path / "python"
    frames = "".join(f'  File "/ts/module{i}.py", line {i}, in <module>\n    import module{i + 1}\n' for i in range(8))
    fake.write_text(f"#!{sys.executable}\nimport sys\n"
                    "sys.stderr.write('/ts/utils/config.py:11: UserWarning: register_new_resolver() is deprecated\\n')\n"
                    f"sys.stderr.write('Traceback (most recent call last):\\n' + {frames!r})\n"
                    "sys.stderr.write(\"ModuleNotFoundError: No module named 'jaxtyping'\\n\")\n"
                    "sys.exit(1)\n")
    fake.chmod(0o755)
    ctx = dataclasses.replace(_ctx(tmp_path, {}), python=str(fake))
    with pytest.raises(ConfigValidationError) as e:
        check_stage_configs(ctx, timeout=120)
    msg = str(e.value)
    assert "ModuleNotFoundError: No module named 'jaxtyping'" in msg and "deprecated" not in msg
    # where it was raised and what, not a screen of import frames
    assert 'File "/ts/module7.py", line 7' in msg and len(msg.splitlines()) <= 5
