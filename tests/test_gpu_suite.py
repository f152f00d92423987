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


@pytest.mark.slow
@pytest.mark.full  # the suite's dry run: minutes of subprocesses
def test_a_step_that_runs_out_of_time_fails_the_suite_by_name(tmp_path):
    r = run_suite(tmp_path, "--timeout", "1", "--skip-benchmarks")
    assert r.returncode == 1
    assert "finetune" in r.stderr and "timed out after 1 s" in r.stderr, r.stderr[-2000:]
    _, by_step, _ = rows_by_step(tmp_path)
    assert by_step["finetune"]["status"].startswith("FAILED")
