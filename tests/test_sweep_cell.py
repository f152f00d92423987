"""One sweep cell run for real with stand-in commands: its record, and on failure the lines
that say why (pipeline.console.failure_lines), not the log's last raw lines."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from threestudio_dreambooth3d.sweep.cell import run_cell
from threestudio_dreambooth3d.sweep.plan import DONE, FAILED

from fakes import plan_sweep

FAILING = ("import sys, warnings\n"
           "print('loading the model')\n"
           "for i in range(20):\n"
           "    warnings.warn(f'noise {i}', UserWarning)\n"
           "def load():\n"
           "    raise ValueError('system.guidance.checkpoint: no DreamBooth checkpoint at /x')\n"
           "load()\n")


def _cell(tmp_path, run_code: str, eval_code: str = "pass"):
    cell = plan_sweep(tmp_path)[0]
    Path(cell.out).mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(cell, run_argv=[sys.executable, "-c", run_code],
                               eval_argv=[sys.executable, "-c", eval_code])


def test_a_failed_cell_records_where_and_why_it_failed(tmp_path):
    cell = _cell(tmp_path, "print('earlier output')", FAILING)
    record = run_cell(cell)
    assert record["status"] == FAILED
    error = record["error"]
    assert error.startswith("dreambooth3d eval exited with code 1:")
    assert "ValueError: system.guidance.checkpoint: no DreamBooth checkpoint at /x" in error
    assert 'line 6, in load' in error  # where it was raised
    assert "noise" not in error and "earlier output" not in error  # warnings and the run's output left out
    assert "noise 19" in Path(record["log"]).read_text()  # the log keeps everything


def test_a_finished_cell_records_done(tmp_path):
    record = run_cell(_cell(tmp_path, "print('ok')"))
    assert record["status"] == DONE and record["eval_json"].endswith("eval.json")
