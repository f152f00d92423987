"""What one cell does, wherever it runs: ``dreambooth3d run`` then ``dreambooth3d eval``.

Both are the same commands a user would type (subprocesses), so a cell's output folder,
manifest and logs are exactly a run's, and an interrupted cell resumes through the
run's manifest. The function never raises for a failing command: it records ``failed``
with the log path in ``CELL/cell.json`` and returns the record, so one bad cell never
stops the others (on a cluster, a job that dies outright is caught by the executor).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from typing import Any, Dict, Optional

from ..formats import now_iso
from ..fs import atomic_write_text
from ..pipeline.console import failure_lines, log_tail
from .plan import DONE, FAILED, RUNNING, Cell

def write_record(cell: Cell, record: Dict[str, Any]) -> Dict[str, Any]:
    path = cell.record_path
    atomic_write_text(path, json.dumps(record, indent=2))  # a reader (the progress line) never sees half a file
    return record


def run_cell(cell: Cell, gpu: Optional[str] = None) -> Dict[str, Any]:
    """Run one cell; ``gpu`` pins it with CUDA_VISIBLE_DEVICES (None: keep the environment's,
    e.g. what Slurm assigned). Returns the record written to ``cell.json``.

    The cell holds its folder's lock (its ``dreambooth3d run`` child works under it): a cell
    another process is running is reported failed, naming that process, and left alone."""
    from ..errors import FolderInUseError
    from ..pipeline.lock import folder_lock

    try:
        with folder_lock(cell.out, argv=["dreambooth3d", "sweep", "cell", cell.key]):
            return _run_cell(cell, gpu)
    except FolderInUseError as e:
        return {"key": cell.key, "fingerprint": cell.fingerprint, "status": FAILED, "error": str(e),
                "log": str(cell.log_path)}


def _run_cell(cell: Cell, gpu: Optional[str]) -> Dict[str, Any]:
    t0 = time.monotonic()
    base = {"key": cell.key, "fingerprint": cell.fingerprint, "seed": cell.seed, "log": str(cell.log_path),
            "host": socket.gethostname(), "gpu": gpu if gpu is not None else os.environ.get("CUDA_VISIBLE_DEVICES"),
            "started_at": now_iso()}
    write_record(cell, {**base, "status": RUNNING})
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    with open(cell.log_path, "ab") as log:
        for name, argv in (("run", cell.run_argv), ("eval", cell.eval_argv)):
            log.write(f"\n$ {' '.join(argv)}\n".encode())
            log.flush()
            start = log.tell()
            try:
                code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cell.out).returncode
            except OSError as e:  # the interpreter is gone, the folder is unwritable...
                code, log_msg = -1, str(e)
                log.write(f"{log_msg}\n".encode())
            if code != 0:
                log.flush()
                return write_record(cell, {
                    **base, "status": FAILED, "finished_at": now_iso(), "elapsed_s": round(time.monotonic() - t0, 2),
                    "error": f"dreambooth3d {name} exited with code {code}:\n"
                             + "\n".join(failure_lines(log_tail(cell.log_path, start))),
                })
    return write_record(cell, {**base, "status": DONE, "finished_at": now_iso(),
                               "elapsed_s": round(time.monotonic() - t0, 2), "eval_json": str(cell.eval_json)})
