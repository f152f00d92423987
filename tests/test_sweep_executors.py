"""Running a sweep's cells with a fake cell function: ours on local GPUs and submitit's local
executor, failures, slots, reruns and reattaching to running jobs."""
from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

import pytest

from threestudio_dreambooth3d.sweep.cell import write_record
from threestudio_dreambooth3d.sweep.executors import LocalGPUExecutor, run_cells
from threestudio_dreambooth3d.sweep.plan import DONE, FAILED, is_finished, read_record
from threestudio_dreambooth3d.sweep.progress import Progress
from threestudio_dreambooth3d.sweep.run import run_sweep

from fakes import finish_cell, plan_sweep, sweep_subjects


def test_local_executor_runs_one_cell_per_gpu_and_a_failure_does_not_stop_the_rest(tmp_path):
    cells = plan_sweep(tmp_path)
    lock, active, seen = threading.Lock(), [0], {"max": 0, "gpus": {}, "in_use": set(), "shared": []}

    def fake(cell, gpu):
        with lock:
            active[0] += 1
            seen["max"] = max(seen["max"], active[0])
            if gpu in seen["in_use"]:
                seen["shared"].append(gpu)  # a GPU given to two running cells at once
            seen["in_use"].add(gpu)
            seen["gpus"][cell.key] = gpu
        time.sleep(0.05)
        with lock:
            active[0] -= 1
            seen["in_use"].discard(gpu)
        if cell.subject == "bear" and cell.method == "latentnerf":
            return write_record(cell, {"key": cell.key, "status": FAILED, "fingerprint": cell.fingerprint,
                                       "log": str(cell.log_path), "error": "boom", "elapsed_s": 1.0})
        if cell.subject == "dog" and cell.method == "latentnerf" and "snow" in cell.prompt:
            raise RuntimeError("the cell function itself crashed")
        return finish_cell(cell, gpu)

    stream = io.StringIO()
    progress = Progress(tmp_path / "sweep", len(cells), 0, 2, stream=stream)
    records = run_cells(cells, LocalGPUExecutor(["3", "5"]), fake, progress=progress, poll_s=0.01)
    assert seen["max"] == 2 and set(seen["gpus"].values()) == {"3", "5"} and seen["shared"] == []
    statuses = {k: r["status"] for k, r in records.items()}
    assert list(statuses.values()).count(FAILED) == 3 and list(statuses.values()).count(DONE) == 5
    crashed = records["dog/a-sks-dog-in-the-snow/latentnerf"]
    assert "the cell function itself crashed" in crashed["error"] and crashed["log"].endswith("cell.log")
    assert read_record(next(c for c in cells if c.key == crashed["key"]))["status"] == FAILED
    text = stream.getvalue()
    assert "sweep: FAILED bear/a-sks-stuffed-animal/latentnerf: boom (log: " in text
    assert re.search(r"sweep: 5/8 done \(0 already\), 0 running, 0 queued, 3 failed, 0 to go", text)
    state = json.loads((tmp_path / "sweep" / "progress.json").read_text())  # for watchers elsewhere
    assert (state["done"], state["failed"], state["to_go"]) == (5, 3, 0)
    assert {f["key"] for f in state["failures"]} == {k for k, r in records.items() if r["status"] == FAILED}


def test_no_more_cells_in_flight_than_the_executor_has_slots(tmp_path):
    """Cluster jobs or local GPUs: the loop itself caps what is submitted and not finished."""
    cells = plan_sweep(tmp_path)

    class Handle:
        def __init__(self, ex, cell):
            self.ex, self.cell, self.polls = ex, cell, 0

        def done(self):
            self.polls += 1
            return self.polls > 2

        def result(self):
            self.ex.inflight.discard(self.cell.key)
            return finish_cell(self.cell)

    class CountingExecutor:
        slots = 3

        def __init__(self):
            self.inflight, self.most = set(), 0

        def submit(self, fn, cell):
            self.inflight.add(cell.key)
            self.most = max(self.most, len(self.inflight))
            return Handle(self, cell)

        def close(self):
            pass

    ex = CountingExecutor()
    records = run_cells(cells, ex, poll_s=0)
    assert ex.most == 3 and len(records) == len(cells) and not ex.inflight


def test_rerun_retries_only_failed_and_missing_cells(tmp_path):
    cells = plan_sweep(tmp_path)
    calls, failing = [], {cells[1].key, cells[4].key}

    def flaky(cell, gpu):
        calls.append(cell.key)
        if cell.key in failing:
            return write_record(cell, {"key": cell.key, "status": FAILED, "fingerprint": cell.fingerprint,
                                       "log": str(cell.log_path), "error": "out of memory"})
        return finish_cell(cell, gpu)

    out = tmp_path / "sweep"
    first = run_sweep(out, cells[:6], LocalGPUExecutor([None]), flaky, stream=io.StringIO(), poll_s=0.01)
    assert len(first["ran"]) == 6 and {f["key"] for f in first["progress"].failures} == failing
    calls.clear()
    failing.clear()
    second = run_sweep(out, cells, LocalGPUExecutor([None]), flaky, stream=io.StringIO(), poll_s=0.01)
    assert sorted(calls) == sorted([cells[1].key, cells[4].key] + [c.key for c in cells[6:]])
    assert not second["progress"].failures and all(is_finished(c) for c in cells)
    calls.clear()
    third = run_sweep(out, cells, None, flaky, stream=io.StringIO())
    assert calls == [] and third["ran"] == []
    assert third["report"]["counts"] == {DONE: 8}


def test_submitit_local_executor_runs_cells_as_jobs(tmp_path, monkeypatch):
    """The cluster path, with submitit's LocalExecutor: each cell a job in its own process."""
    submitit = pytest.importorskip("submitit")
    # a dead job leaves no result file; submitit waits 15 s for a slow shared disk (its own tests set 0 too)
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 0)
    from threestudio_dreambooth3d.sweep.executors import SubmititExecutor

    cells = plan_sweep(tmp_path, methods=("dreambooth3d",), subjects=sweep_subjects(tmp_path)[1:])

    def fake_job(cell, gpu):  # pickled by value into the job (a nested function)
        import json
        import os

        from threestudio_dreambooth3d.sweep.cell import write_record

        if "snow" in cell.prompt and cell.subject == "bear":
            os._exit(3)  # the job dies without a word: the executor must still record it
        cell.eval_json.parent.mkdir(parents=True, exist_ok=True)
        cell.eval_json.write_text(json.dumps({"clip": {"m": {"r_precision": 1.0}}, "dino": {}}))
        return write_record(cell, {"key": cell.key, "status": "done", "fingerprint": cell.fingerprint,
                                   "pid": os.getpid(), "elapsed_s": 0.5})

    ex = SubmititExecutor(tmp_path / "submitit", "local", {"timeout_min": 5, "slurm_partition": "ignored"})
    result = run_sweep(tmp_path / "sweep", cells, ex, fake_job, stream=io.StringIO(), poll_s=0.1)
    records = result["records"]
    assert len(records) == 2
    dead = records["bear/a-sks-stuffed-animal-in-the-snow/dreambooth3d"]
    assert dead["status"] == FAILED and "submitit" in dead["log"] and Path(dead["log"]).parent.is_dir()
    done = [r for r in records.values() if r["status"] == DONE]
    import os

    assert len(done) == 1 and done[0]["pid"] != os.getpid()  # the job ran in its own process
    assert result["report"]["counts"] == {DONE: 1, FAILED: 1}


def test_rerun_reattaches_to_a_slurm_job_still_running_instead_of_submitting_again(tmp_path):
    pytest.importorskip("submitit")
    from threestudio_dreambooth3d.sweep.executors import SubmititExecutor

    cells = plan_sweep(tmp_path, methods=("dreambooth3d",))[:3]
    states = {"41": "RUNNING", "42": "COMPLETED", "43": "PENDING"}
    by_job = {}

    class FakeSlurmJob:  # what submitit.SlurmJob(folder, job_id) answers, without a cluster
        def __init__(self, folder, job_id):
            self.job_id, self.state = job_id, states.get(job_id, "PENDING")
            self.paths = type("P", (), {"stderr": Path(folder.replace("%j", job_id)) / "log.err"})()

        def done(self):
            return True

        def result(self):
            return finish_cell(by_job[self.job_id])

    ex = SubmititExecutor(tmp_path / "submitit", "local")
    ex._job_class = FakeSlurmJob  # as with cluster="slurm"
    submitted = []

    def fake_submit(fn, cell, gpu):
        submitted.append(cell.key)
        job = FakeSlurmJob(str(ex.folder / "%j"), str(100 + len(submitted)))
        by_job[job.job_id] = cell
        return job

    ex.executor.submit = fake_submit
    # job 41: this cell, still running -> attach; job 42: ended without a result -> submit anew;
    # job 43: pending, but for other inputs (the plan changed) -> submit anew
    ex.jobs_file.write_text(json.dumps({cells[0].key: {"job_id": "41", "fingerprint": cells[0].fingerprint},
                                        cells[1].key: {"job_id": "42", "fingerprint": cells[1].fingerprint},
                                        cells[2].key: {"job_id": "43", "fingerprint": "old"}}))
    by_job["41"] = cells[0]
    records = run_cells(cells, ex, poll_s=0)
    assert submitted == [cells[1].key, cells[2].key]
    assert all(r["status"] == DONE for r in records.values()) and len(records) == 3
    jobs = json.loads(ex.jobs_file.read_text())
    assert jobs[cells[1].key]["job_id"] == "101" and jobs[cells[0].key]["job_id"] == "41"
