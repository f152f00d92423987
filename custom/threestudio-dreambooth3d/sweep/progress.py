"""Progress across a sweep's cells: done / running / queued / failed / to go, time so far, an estimate.

The line is printed whenever a count changes and at least every ``every_s`` seconds;
``SWEEP/progress.json`` holds the same numbers for anyone watching from elsewhere.
Running vs queued comes from each in-flight cell's ``cell.json`` (the cell function marks
itself running when it starts, which on a cluster may be long after submission).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO

from ..formats import format_duration
from ..fs import atomic_write_text
from .plan import DONE, PROGRESS_JSON, RUNNING, Cell, read_record


def estimate_remaining(durations: Sequence[float], remaining: int, slots: int,
                       running_for: Sequence[float] = ()) -> Optional[float]:
    """Seconds left: the mean duration of the cells finished so far, times the cells still to
    finish (running ones included, less the time they have already run), over the cells that
    run at once. None before the first cell finishes."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = mean * remaining - sum(min(t, mean) for t in running_for)
    return max(0.0, work) / max(1, slots)


class Progress:
    def __init__(self, out: Path, total: int, skipped: int, slots: Optional[int], stream: TextIO = sys.stdout,
                 every_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.path = Path(out) / PROGRESS_JSON
        self.total, self.skipped = total, skipped
        self.slots = slots or max(1, total - skipped)
        self.stream, self.every_s, self.clock = stream, every_s, clock
        self.t0 = clock()
        self.done = self.failed = 0
        self.running = self.queued = 0
        self.durations: List[float] = []
        self._running_since: Dict[str, float] = {}  # key -> clock time first seen running
        self.failures: List[Dict[str, Any]] = []
        self._last_line: Optional[str] = None
        self._last_print = -float("inf")

    # -- events ----------------------------------------------------------------------------
    def finished(self, cell: Cell, record: Dict[str, Any]) -> None:
        ok = record.get("status") == DONE
        self.done += ok
        self.failed += not ok
        if record.get("elapsed_s") is not None:
            self.durations.append(float(record["elapsed_s"]))
        if not ok:
            first = (record.get("error") or "").splitlines()[:1]
            self.failures.append({"key": cell.key, "log": record.get("log"), "error": record.get("error")})
            self._print(f"sweep: FAILED {cell.key}: {first[0] if first else 'no error recorded'} (log: {record.get('log')})")
        else:
            self._print(f"sweep: done {cell.key} in {format_duration(record.get('elapsed_s') or 0)}")

    def update(self, inflight: Sequence[Cell]) -> None:
        now = self.clock()
        running = [c.key for c in inflight if (read_record(c) or {}).get("status") == RUNNING]
        self._running_since = {k: self._running_since.get(k, now) for k in running}
        self.running = len(running)
        self.queued = len(inflight) - self.running
        self.report()

    # -- numbers ---------------------------------------------------------------------------
    def counts(self) -> Dict[str, Any]:
        elapsed = self.clock() - self.t0
        to_go = self.total - self.skipped - self.done - self.failed - self.running - self.queued
        now = self.clock()
        eta = estimate_remaining(self.durations, to_go + self.running + self.queued, self.slots,
                                 [now - t for t in self._running_since.values()])
        return {"total": self.total, "skipped_finished": self.skipped, "done": self.done, "failed": self.failed,
                "running": self.running, "queued": self.queued, "to_go": to_go, "elapsed_s": round(elapsed, 1),
                "estimate_left_s": None if eta is None else round(eta, 1), "failures": self.failures}

    def line(self) -> str:
        c = self.counts()
        eta = c["estimate_left_s"]
        left = "estimate after the first cell" if eta is None else f"about {format_duration(eta)} left"
        if c["running"] + c["queued"] + c["to_go"] == 0:
            left = "finished"
        return (f"sweep: {c['done'] + c['skipped_finished']}/{c['total']} done ({c['skipped_finished']} already), "
                f"{c['running']} running, {c['queued']} queued, {c['failed']} failed, {c['to_go']} to go | "
                f"{format_duration(c['elapsed_s'])} so far, {left}")

    def report(self, force: bool = False) -> None:
        line = self.line()
        now = self.clock()
        # the time changes every second: print on a changed count, or every every_s seconds
        counts_part = line.split(" | ")[0]
        if force or counts_part != (self._last_line or "").split(" | ")[0] or now - self._last_print >= self.every_s:
            self._print(line)
            self._last_line, self._last_print = line, now
            self._write()  # as often as the line: not every poll, which may be every second

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.counts(), indent=2))
