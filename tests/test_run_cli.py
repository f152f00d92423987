"""``dreambooth3d run`` from its command line, with a fake threestudio checkout: dry runs,
input errors before any work, --set, --method, Ctrl-C."""
from __future__ import annotations

import pytest

from threestudio_dreambooth3d.pipeline import manifest as mf
from threestudio_dreambooth3d.pipeline.runner import Runner

from fakes import FakeExecutor, PROMPT, run_cli


def test_dry_run_shows_the_multiview_finetune_starting_from_partial(fake_threestudio, configs, subject, tmp_path, capsys):
    argv = ["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", PROMPT, "--model", "/models/tiny-sd",
            "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio), "--configs", str(configs),
            "--dry-run", "--preset", "smoke"]
    assert run_cli(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    mv = lines[[i for i, line in enumerate(lines) if line.startswith("multiview_finetune:")][0] + 1]
    assert "--init-checkpoint " + str((tmp_path / "out" / "finetune" / "checkpoints" / "partial").resolve()) in mv
    assert run_cli(argv + ["--multiview-init", "full"]) == 0
    assert "checkpoints/full --extra-images" in capsys.readouterr().out


def test_cli_prompt_without_identifier_warns_and_explains(make_ctx, fake_threestudio, configs, subject, tmp_path, capsys):
    code = run_cli(["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", "a dog wearing a hat",
                 "--model", "/models/tiny-sd", "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio),
                 "--configs", str(configs), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0
    assert "does not contain the identifier 'sks'" in captured.err and "a sks dog wearing a hat" in captured.err
    assert "finetune: run (not run yet)" in captured.out and "launch.py" in captured.out
    assert not (tmp_path / "out" / "manifest.json").exists()  # a dry run writes nothing


@pytest.mark.parametrize("problem, message", [
    ("missing", "does not exist"),
    ("empty", "has no images"),
    ("text", "notes.doc is not an image"),
    ("broken", "broken.png cannot be read as an image"),
])
def test_cli_subject_folder_problems(problem, message, tmp_path, fake_threestudio, configs, capsys):
    folder = tmp_path / "photos"
    if problem != "missing":
        folder.mkdir()
    if problem == "text":
        (folder / "notes.doc").write_text("x")
    if problem == "broken":
        (folder / "broken.png").write_bytes(b"not a png")
    code = run_cli(["run", "--subject", str(folder), "--class-noun", "dog", "--prompt", PROMPT, "--model", "m",
                 "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio), "--configs", str(configs)])
    assert code == 2 and message in capsys.readouterr().err


def test_cli_threestudio_not_found_exits_with_the_fix(subject, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("THREESTUDIO_ROOT", raising=False)
    code = run_cli(["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", PROMPT, "--model", "m",
                 "--out", str(tmp_path / "out"), "--threestudio", str(tmp_path)])
    assert code == 2 and "is not a threestudio checkout" in capsys.readouterr().err


def test_set_overrides_parse_per_step():
    from threestudio_dreambooth3d.cli.run import parse_set

    assert parse_set(["stage1:trainer.max_steps=5000", "mesh:system.exporter.texture_size=2048"]) == {
        "stage1": ["trainer.max_steps=5000"], "export": ["system.exporter.texture_size=2048"]}
    with pytest.raises(ValueError, match="STEP:KEY=VALUE"):
        parse_set(["trainer.max_steps=5"])


def test_ctrl_c_prints_one_line_naming_the_step_and_exits_130(make_ctx, capsys):
    from threestudio_dreambooth3d.cli.run import run_steps

    ctx = make_ctx()
    code = run_steps(Runner(ctx, executor=FakeExecutor(interrupt_on="stage1")))
    err = capsys.readouterr().err
    assert code == 130
    assert err.strip() == "dreambooth3d run: interrupted during stage1; rerun the same command to resume"
    assert "Traceback" not in err
    assert mf.Manifest(ctx.out).get("stage1").status == mf.RUNNING  # so the rerun resumes it


def test_run_method_flag_runs_only_the_baselines_steps_and_checks_its_config(fake_threestudio, configs, subject, tmp_path,
                                                                              capsys):
    argv = ["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", PROMPT, "--model", "/models/tiny-sd",
            "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio), "--configs", str(configs),
            "--dry-run", "--preset", "smoke", "--method", "dreamboothfusion"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith((" ", "dreambooth3d run: checking"))] == [
        "finetune", "baseline", "export", "summary"]
    assert "dreamboothfusion-baseline.yaml" in out and "checkpoints/full" in out
    (configs / "latentnerf-dreambooth-baseline.yaml").unlink(missing_ok=True)
    assert run_cli(argv[:-1] + ["latentnerf"]) == 2
    assert "latentnerf-dreambooth-baseline.yaml not found" in capsys.readouterr().err
