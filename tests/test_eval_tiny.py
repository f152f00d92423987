"""Evaluation without a download: ``eval --tiny`` / ``--preset smoke`` build tiny random CLIP and
DINO models offline (once), eval.log is always written, transformers' bars stay off the terminal,
and a sweep checks its cells' eval models before any cell runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from threestudio_dreambooth3d.cli import main


@pytest.fixture
def views(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "views"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (96, 32), (60 * i, 30, 30)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DREAMBOOTH3D_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


def test_eval_tiny_scores_offline_and_logs_to_eval_log(views, subject_dir, cache, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--views", str(views), "--prompt", "a sks dog", "--subject", str(subject_dir),
                 "--tiny", "--out", str(out)]) == 0
    results = json.loads((out / "eval.json").read_text())
    (clip,) = results["clip"]
    (dino,) = results["dino"]
    assert Path(clip).parent.parent == cache and Path(clip).name == "tiny-random-clip"
    assert Path(dino).name == "tiny-random-dino"
    log = (out / "eval.log").read_text()
    assert f"loaded CLIP {clip}" in log and f"loaded DINO {dino}" in log and "3 views from" in log
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "model shards" not in err and "%|" not in err, err
    # built once, reused
    stamp = (Path(clip) / "config.json").stat().st_mtime_ns
    assert main(["eval", "--views", str(views), "--prompt", "a sks dog", "--preset", "smoke", "--out", str(out)]) == 0
    assert (Path(clip) / "config.json").stat().st_mtime_ns == stamp
    assert list(json.loads((out / "eval.json").read_text())["clip"]) == [clip]


def test_explicit_models_win_over_tiny_and_hub_ids_fail_naming_tiny(views, cache, tmp_path, capsys, monkeypatch):
    from threestudio_dreambooth3d.cli.eval import eval_models

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    clip, dino = eval_models(["my/clip"], None, tiny=True)
    assert clip == ["my/clip"] and Path(dino).name == "tiny-random-dino"
    assert eval_models(None, "none", tiny=False) == (
        ["openai/clip-vit-base-patch16", "openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14"], None)
    assert main(["eval", "--views", str(views), "--prompt", "a sks dog", "--out", str(tmp_path / "e")]) == 2
    assert "--tiny (tiny random models built offline" in capsys.readouterr().err


def _sweep_args(tmp_path, subject_dir, preset):
    root = tmp_path / "threestudio"
    (root / "threestudio").mkdir(parents=True, exist_ok=True)
    (root / "launch.py").write_text("")
    (root / "threestudio" / "__init__.py").write_text("")
    return ["sweep", "--subject", f"{subject_dir}:dog", "--out", str(tmp_path / "sweep"), "--threestudio", str(root),
            "--preset", preset]


def test_sweep_checks_its_eval_models_before_any_cell(tmp_path, subject_dir, cache, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    # the paper's hub models cannot load offline: the dry run warns, a real sweep refuses before any cell
    assert main(_sweep_args(tmp_path, subject_dir, "default") + ["--dry-run"]) == 0
    assert "every cell's eval would fail" in capsys.readouterr().err
    assert main(_sweep_args(tmp_path, subject_dir, "default") + ["--methods", "dreambooth3d"]) == 2
    err = capsys.readouterr().err
    assert "openai/clip-vit-base-patch16" in err and "sweep's --clip-models" in err
    assert not (tmp_path / "sweep" / "cells").exists()
    # a smoke sweep evaluates with the tiny models: no warning, each cell's eval asks for them
    assert main(_sweep_args(tmp_path, subject_dir, "smoke") + ["--dry-run"]) == 0
    assert "eval would fail" not in capsys.readouterr().err
    from threestudio_dreambooth3d.sweep.plan import SweepOptions, eval_argv
    from threestudio_dreambooth3d.sweep.dataset import parse_subject_spec

    s = parse_subject_spec(f"{subject_dir}:dog")
    argv = eval_argv(SweepOptions(out=tmp_path, preset="smoke"), s, "a sks dog", tmp_path / "c")
    assert argv[argv.index("--preset") + 1] == "smoke"
    assert "--preset" not in eval_argv(SweepOptions(out=tmp_path, preset="default"), s, "a sks dog", tmp_path / "c")
