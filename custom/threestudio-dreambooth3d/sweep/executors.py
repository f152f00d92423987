"""Where cells run, and the loop that feeds them.

- ``LocalGPUExecutor`` (the default): on this machine, one cell per visible GPU at a
  time, each cell's processes pinned with ``CUDA_VISIBLE_DEVICES``; one cell at a time
  when there is no GPU (or the preset runs on the CPU).
- ``SubmititExecutor``: through submitit (github.com/facebookincubator/submitit), the
  library researchers already use to put Python functions on Slurm: one job per cell
  (``cluster="slurm"``), or submitit's own local/debug executors (``"local"`` runs jobs
  as local processes, ``"debug"`` in this process) - the same code path, testable
  without a cluster.

Both hand out *handles* with ``done()`` and ``result()``; :func:`run_cells` keeps at most
``executor.slots`` cells in flight, records each outcome, and never lets one failure stop
the rest.
"""
from __future__ import annotations

import json
import os
import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .cell import run_cell, write_record
from .plan import FAILED, Cell
from ..errors import MachineError

CellFunction = Callable[[Cell, Optional[str]], Dict[str, Any]]
QUEUED = "queued"
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}


def visible_gpus() -> List[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries ('0', '1', or UUIDs)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


class _Handle:
    log: Optional[str] = None

    def done(self) -> bool:
        raise NotImplementedError

    def result(self) -> Dict[str, Any]:
        raise NotImplementedError


class _FutureHandle(_Handle):
    def __init__(self, future: Future):
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> Dict[str, Any]:
        return self.future.result()


class LocalGPUExecutor:
    """A thread per slot; each slot is a GPU (or ``None``: the CPU) handed to one cell at a time."""

    name = "local"

    def __init__(self, gpus: Sequence[Optional[str]]):
        self.gpus = list(gpus) or [None]
        self.slots = len(self.gpus)
        self._free: "queue.Queue[Optional[str]]" = queue.Queue()
        for g in self.gpus:
            self._free.put(g)
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="sweep-cell")

    def describe(self) -> str:
        where = f"GPUs {', '.join(str(g) for g in self.gpus)}" if self.gpus[0] is not None else "the CPU"
        return f"this machine, {self.slots} cell(s) at a time on {where}"

    def submit(self, fn: CellFunction, cell: Cell) -> _Handle:
        def work() -> Dict[str, Any]:
            gpu = self._free.get()
            try:
                return fn(cell, gpu)
            finally:
                self._free.put(gpu)

        return _FutureHandle(self._pool.submit(work))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _JobHandle(_Handle):
    def __init__(self, job):
        self.job = job
        self.log = str(job.paths.stderr)

    def done(self) -> bool:
        return self.job.done()

    def result(self) -> Dict[str, Any]:
        return self.job.result()


class SubmititExecutor:
    """One submitit job per cell. ``cluster``: "slurm", or submitit's "local" / "debug".

    ``parameters`` are submitit's (``timeout_min``, ``gpus_per_node``, ``cpus_per_task``,
    ``mem_gb``, ``slurm_partition``, any ``slurm_*``); ``max_parallel`` caps the jobs in
    flight (None: all at once, Slurm queues them)."""

    def __init__(self, folder: Path, cluster: str = "slurm", parameters: Optional[Dict[str, Any]] = None,
                 max_parallel: Optional[int] = None):
        try:
            import submitit
        except ImportError as e:
            raise MachineError("the cluster executors need submitit: pip install 'threestudio-dreambooth3d[cluster]' "
                               "(or pip install submitit).") from e
        self.name = f"submitit-{cluster}"
        self.folder = Path(folder)
        self.cluster = cluster
        self.executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=cluster)
        params = dict(parameters or {})
        if cluster != "slurm":  # local/debug accept only the generic parameters
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        if params:
            self.executor.update_parameters(**params)
        self.slots = max_parallel
        # Slurm jobs outlive the process that submitted them: a rerun re-attaches to a cell's
        # job that is still queued or running instead of starting a second one on the same folder
        self.jobs_file = self.folder / "jobs.json"
        self._job_class = submitit.SlurmJob if cluster == "slurm" else None

    def describe(self) -> str:
        return f"submitit ({self.cluster}), job logs under {self.folder}"

    def _jobs(self) -> Dict[str, Dict[str, str]]:
        try:
            return json.loads(self.jobs_file.read_text())
        except (OSError, ValueError):
            return {}

    def submit(self, fn: CellFunction, cell: Cell) -> _Handle:
        job = self.executor.submit(fn, cell, None)
        if self._job_class is not None:
            jobs = self._jobs()
            jobs[cell.key] = {"job_id": str(job.job_id), "fingerprint": cell.fingerprint}
            self.folder.mkdir(parents=True, exist_ok=True)
            self.jobs_file.write_text(json.dumps(jobs, indent=2))
        return _JobHandle(job)

    def attach(self, cell: Cell) -> Optional[_Handle]:
        """The cell's earlier Slurm job, if it is still queued or running for the same inputs."""
        entry = self._jobs().get(cell.key) if self._job_class is not None else None
        if not entry or entry.get("fingerprint") != cell.fingerprint:
            return None
        job = self._job_class(folder=str(self.folder / "%j"), job_id=entry["job_id"])
        return _JobHandle(job) if str(job.state).upper() in SLURM_ACTIVE else None

    def close(self) -> None:
        pass


def run_cells(cells: Sequence[Cell], executor, fn: CellFunction = run_cell, progress=None,
              poll_s: float = 1.0) -> Dict[str, Dict[str, Any]]:
    """Run every cell, at most ``executor.slots`` at a time; returns each cell's record by key.

    A cell whose job dies without writing its own record (killed, out of memory, timed out
    on the cluster) is recorded here as failed, with the job's log."""
    todo: List[Cell] = list(cells)
    limit = executor.slots or max(1, len(todo))
    inflight: Dict[str, tuple] = {}
    results: Dict[str, Dict[str, Any]] = {}
    try:
        while todo or inflight:
            while todo and len(inflight) < limit:
                cell = todo.pop(0)
                handle = executor.attach(cell) if hasattr(executor, "attach") else None
                if handle is None:
                    # "queued" replaces an old failure: the progress line tells queued from running
                    write_record(cell, {"key": cell.key, "status": QUEUED, "fingerprint": cell.fingerprint,
                                        "seed": cell.seed, "log": str(cell.log_path)})
                    handle = executor.submit(fn, cell)
                inflight[cell.key] = (cell, handle)
            for key, (cell, handle) in list(inflight.items()):
                if not handle.done():
                    continue
                del inflight[key]
                try:
                    rec = handle.result()
                except Exception as e:  # the job itself died; the cell function never raises
                    rec = write_record(cell, {"key": cell.key, "status": FAILED, "fingerprint": cell.fingerprint,
                                              "seed": cell.seed, "log": handle.log or str(cell.log_path),
                                              "error": f"{type(e).__name__}: {e}"})
                results[key] = rec
                if progress is not None:
                    progress.finished(cell, rec)
            if progress is not None:
                progress.update([c for c, _ in inflight.values()])
            if inflight:
                time.sleep(poll_s)
    finally:
        executor.close()
    return results
