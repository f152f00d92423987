"""benchmarks/gpu_suite.py on its CPU dry path (no GPU, no threestudio needed); in the full set
(``-m full``), not CI's default run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
THREESTUDIO_FREE = ("finetune", "bench_translation", "bench_dreambooth_step")


def run_suite(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # without threestudio, however this machine could import one (PYTHONPATH, installed): a
    # THREESTUDIO_ROOT that is not a checkout is never replaced by another threestudio
    # (the threestudio tier runs every row)
    env = {**os.environ, "THREESTUDIO_ROOT": str(tmp_path / "no-threestudio")}
    return subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(tmp_path / "suite"),
                           "--models-dir", str(tmp_path / "models"), *args],
                          capture_output=True, text=True, env=env, timeout=1800)


def rows_by_step(tmp_path: Path):
    report = json.loads((tmp_path / "suite" / "gpu_suite.json").read_text())
    return report, {r["step"].split(":")[0]: r for r in report["rows"]}, report["rows"]


@pytest.mark.slow
@pytest.mark.full  # the suite's dry run: minutes of subprocesses
def test_dry_run_writes_a_row_with_numbers_for_each_step_it_can_run(tmp_path):
    r = run_suite(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report, by_step, rows = rows_by_step(tmp_path)
    for name in THREESTUDIO_FREE:
        row = by_step[name]
        assert row["status"] == "ok", row
        assert row["s_per_step"] > 0 and row["timed_steps"] >= 1 and row["wall_s"] > 0, row
    # the finetune's estimate: set-up + the default preset's 800 steps (and 200 class images)
    ft = by_step["finetune"]
    assert ft["default_steps"] == 800 and ft["estimate_s"] > 800 * ft["s_per_step"]
    for name in ("stage1", "stage2", "multiview_finetune", "stage3", "export", "bench_sds"):
        assert by_step[name]["status"].startswith("not run: threestudio not found"), by_step[name]
    table = (tmp_path / "suite" / "gpu_suite.md").read_text()
    assert all(f"| {name}" in table for name in ("finetune", "stage1", "export", "bench_translation: one call per view"))
    assert table in r.stdout
    # every finetune mode has its row: the runnable ones with numbers, 8-bit AdamW without bitsandbytes says so
    modes = {r["step"]: r for r in rows if r["step"].startswith("finetune mode: ")}
    assert len(modes) == 12, list(modes)
    for name in ("lora, no checkpointing, AdamW", "full, checkpointing, AdamW", "full + text encoder, checkpointing, AdamW"):
        assert modes[f"finetune mode: {name}"]["s_per_step"] > 0, modes
    assert all(m["status"] == "ok" or "bitsandbytes" in m["status"] for m in modes.values())
    # doctor's table and the CUDA pieces are in the report
    assert "free disk" in report["doctor"]["table"] and set(report["cuda_pieces"]) == {"tinycudann", "nerfacc kernels"}
    assert "dreambooth3d doctor --preset smoke" in table


@pytest.mark.slow
@pytest.mark.full  # the suite's dry run: minutes of subprocesses
def test_a_step_that_runs_out_of_time_fails_the_suite_by_name(tmp_path):
    r = run_suite(tmp_path, "--timeout", "1", "--skip-benchmarks")
    assert r.returncode == 1
    assert "finetune" in r.stderr and "timed out after 1 s" in r.stderr, r.stderr[-2000:]
    _, by_step, _ = rows_by_step(tmp_path)
    assert by_step["finetune"]["status"].startswith("FAILED")


def _suite_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_shows_the_540_s_default_budget():
    r = subprocess.run([sys.executable, str(SUITE), "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--budget" in r.stdout
    assert "(default: 540)" in " ".join(r.stdout.split()), r.stdout


def test_gpu_tables_replace_only_the_docs_section(tmp_path):
    suite = _suite_module()
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# B\n\nbefore\n{suite.DOCS_BEGIN}\nold table\n{suite.DOCS_END}\nafter\n")
    suite.write_docs_section(doc, "| new | table |")
    assert doc.read_text() == f"# B\n\nbefore\n{suite.DOCS_BEGIN}\n| new | table |\n{suite.DOCS_END}\nafter\n"
    assert suite.DOCS_BEGIN in suite.DOCS.read_text() and suite.DOCS_END in suite.DOCS.read_text()


def test_cuda_pieces_are_read_from_the_step_logs(tmp_path, monkeypatch):
    suite = _suite_module()
    monkeypatch.setattr(suite.torch.cuda, "is_available", lambda: True)
    (tmp_path / "stage1.log").write_text("UserWarning: tinycudann is not importable: using the pure-torch stand-in")
    (tmp_path / "stage3.log").write_text("all fine")
    pieces = suite.cuda_pieces(tmp_path, ["finetune", "stage1", "stage3"])
    assert pieces == {"tinycudann": "pure-torch stand-in (in stage1)", "nerfacc kernels": "the real CUDA extension"}
    assert suite.cuda_pieces(tmp_path, ["finetune"])["tinycudann"].startswith("not known")


def test_measurements_after_the_pipeline_are_skipped_not_failed_when_the_budget_is_spent(tmp_path):
    import argparse
    import time

    suite = _suite_module()
    args = argparse.Namespace(dry_run=True, models_dir=tmp_path, timeout=600)
    deadline = time.monotonic() + 10  # under a minute left
    rows = suite.run_finetune_modes(args, tmp_path, deadline) + suite.run_benchmarks(args, tmp_path, None, deadline)
    assert [r["status"] for r in rows if r["step"] != "bench_sds"] == [suite.BUDGET_SPENT] * 3
    assert not any(r["status"].startswith("FAILED") for r in rows)
