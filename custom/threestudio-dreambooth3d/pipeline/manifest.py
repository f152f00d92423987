"""The run manifest: which pipeline steps finished, with which inputs, producing what.

``OUT/manifest.json`` holds one record per step. A record's ``inputs`` are everything
the step's result depends on (options, a sha256 of the subject photos, the config
file's hash) plus the ``output_id`` of every upstream step it consumes. A step gets a
fresh ``output_id`` each time it produces outputs, so redoing a step changes the
inputs of everything downstream and the change propagates without hashing
gigabytes of checkpoints.

The file is rewritten atomically (temporary file + rename) after every change, so a
run killed at any moment leaves a readable manifest; a step left ``running`` is how
the next run knows it was interrupted.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import DiskFullError, ManifestError  # noqa: F401  (DiskFullError: callers import it from here)
from ..fs import atomic_write_text, fingerprint, raise_if_disk_full  # noqa: F401  (re-exported)

MANIFEST_FILE = "manifest.json"
FORMAT = "dreambooth3d-manifest/1"

RUNNING, DONE, FAILED = "running", "done", "failed"


@dataclass
class StepRecord:
    name: str
    status: str
    inputs: Dict[str, Any]
    fingerprint: str
    outputs: Dict[str, str] = field(default_factory=dict)  # label -> path relative to the output folder
    commands: List[str] = field(default_factory=list)  # shell-ready commands that produced the outputs
    output_id: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    elapsed_s: Optional[float] = None
    error: Optional[str] = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Manifest:
    """``OUT/manifest.json``; every mutating method saves before returning."""

    def __init__(self, out_dir: Union[str, Path]):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_FILE
        self.run_info: Dict[str, Any] = {}
        self.steps: Dict[str, StepRecord] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise ManifestError(
                f"{self.path} is not a readable manifest ({e}). Delete it to recompute every step, "
                "or use a new --out folder."
            ) from e
        if data.get("format") != FORMAT:
            raise ManifestError(f"{self.path} has format {data.get('format')!r}, expected {FORMAT!r}. Use a new --out folder.")
        self.run_info = data.get("run", {})
        self.steps = {name: StepRecord(**rec) for name, rec in data.get("steps", {}).items()}

    def save(self) -> None:
        data = {"format": FORMAT, "run": self.run_info, "steps": {n: asdict(r) for n, r in self.steps.items()}}
        atomic_write_text(self.path, json.dumps(data, indent=2))

    def get(self, name: str) -> Optional[StepRecord]:
        return self.steps.get(name)

    def set_run_info(self, info: Dict[str, Any]) -> None:
        self.run_info = info
        self.save()

    def start(self, name: str, inputs: Dict[str, Any]) -> StepRecord:
        rec = StepRecord(name=name, status=RUNNING, inputs=inputs, fingerprint=fingerprint(inputs), started_at=_now())
        self.steps[name] = rec
        self.save()
        return rec

    def finish(self, name: str, outputs: Dict[str, str], commands: List[str], elapsed_s: float) -> StepRecord:
        rec = self.steps[name]
        rec.status, rec.outputs, rec.commands = DONE, dict(outputs), list(commands)
        rec.finished_at, rec.elapsed_s, rec.error = _now(), round(elapsed_s, 2), None
        rec.output_id = uuid.uuid4().hex
        self.save()
        return rec

    def fail(self, name: str, error: str, commands: List[str], elapsed_s: float) -> None:
        rec = self.steps[name]
        rec.status, rec.error, rec.commands, rec.elapsed_s = FAILED, error, list(commands), round(elapsed_s, 2)
        self.save()

    def forget(self, name: str) -> None:
        if self.steps.pop(name, None) is not None:
            self.save()
