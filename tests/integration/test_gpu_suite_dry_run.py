"""benchmarks/gpu_suite.py --dry-run with threestudio: every pipeline step and benchmark gives numbers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"
PIPELINE = ("finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export")


@pytest.mark.slow
def test_dry_run_times_every_stage_and_benchmark(threestudio, threestudio_root, tmp_path):
    env = {**os.environ, "THREESTUDIO_ROOT": str(threestudio_root)}
    r = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(tmp_path / "suite"),
                        "--models-dir", str(tmp_path / "models")], capture_output=True, text=True, env=env, timeout=3000)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((tmp_path / "suite" / "gpu_suite.json").read_text())
    rows = {row["step"]: row for row in report["rows"]}
    for name in PIPELINE:
        row = rows[name]
        assert row["status"] == "ok" and row["wall_s"] > 0 and row["peak_gib"] > 0, row
        assert row["estimate_s"] >= (row.get("setup_s") or 0), row
    for name in ("finetune", "stage1", "multiview_finetune", "stage3"):  # the steps with training steps
        assert rows[name]["s_per_step"] > 0 and rows[name]["timed_steps"] >= 1, rows[name]
    assert rows["stage1"]["default_steps"] == 10000 and rows["finetune"]["default_steps"] == 800
    for bench in ("bench_sds", "bench_translation", "bench_dreambooth_step"):
        variants = [row for step, row in rows.items() if step.startswith(bench + ":")]
        assert len(variants) >= 2 and all(v["s_per_step"] > 0 for v in variants), bench
    assert report["estimate_default_pipeline_s"] == pytest.approx(sum(rows[n]["estimate_s"] for n in PIPELINE))
    table = (tmp_path / "suite" / "gpu_suite.md").read_text()
    assert "Estimated default pipeline" in table and all(f"| {n} |" in table for n in PIPELINE)
