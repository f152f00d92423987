"""One sweep pass: skip finished cells, run the rest where the executor says, write the report."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, TextIO

from .cell import run_cell
from .executors import CellFunction, run_cells
from .plan import Cell, is_finished
from .progress import Progress
from .report import write_report


def run_sweep(out: Path, cells: Sequence[Cell], executor: Optional[Any], fn: CellFunction = run_cell,
              methods: Optional[Sequence[str]] = None, clip_i_model: Optional[str] = None,
              every_s: float = 60.0, stream: TextIO = sys.stdout, poll_s: float = 1.0) -> Dict[str, Any]:
    """Run every unfinished cell (failed, interrupted, never run, changed), then write the report.

    Returns ``{"ran": keys run this time, "records": their records, "progress": Progress,
    "report": write_report's result}``."""
    todo = [c for c in cells if not is_finished(c)]
    progress = Progress(out, total=len(cells), skipped=len(cells) - len(todo), slots=getattr(executor, "slots", None),
                        stream=stream, every_s=every_s)
    if todo:
        print(f"sweep: running {len(todo)} cell(s) on {executor.describe()}", file=stream, flush=True)
        progress.report(force=True)
        records = run_cells(todo, executor, fn, progress=progress, poll_s=poll_s)
    else:
        if executor is not None:
            executor.close()
        records = {}
    progress.report(force=True)
    report = write_report(out, cells, methods, clip_i_model=clip_i_model)
    return {"ran": [c.key for c in todo], "records": records, "progress": progress, "report": report}
