"""The run manifest: which pipeline steps finished, with which inputs, producing what.

``OUT/manifest.json`` holds one record per step. A record's ``inputs`` are everything
the step's result depends on (options, a sha256 of the subject photos, the config
file's hash) plus the ``output_id`` of every upstream step it consumes. A step gets a
fresh ``output_id`` each time it produces outputs, so redoing a step changes the
inputs of everything downstream and the change propagates without hashing
gigabytes of checkpoints.

The file is rewritten atomically (temporary file + rename) after every change, so a
run killed at any moment leaves a readable manifest; a step left ``running`` is how
the next run knows it was interrupted. A second copy, ``OUT/.manifest.json.bak``, is written
after it: a manifest damaged from outside (truncated, edited) is rebuilt from the copy; a
record missing a field is dropped (that step is redone) rather than failing the run. Each
record's ``checks`` hold a :func:`~threestudio_dreambooth3d.fs.content_fingerprint` of every
output, which the runner compares before skipping the step.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import ManifestError
from ..formats import now_iso
from ..fs import atomic_write_text, fingerprint

MANIFEST_FILE = "manifest.json"
BACKUP_FILE = ".manifest.json.bak"
log = logging.getLogger(__name__)
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
    checks: Dict[str, str] = field(default_factory=dict)  # label -> content fingerprint of the output

    @classmethod
    def from_json(cls, name: str, data: Any) -> Optional["StepRecord"]:
        """The record, or None when a field it cannot do without is missing or of the wrong kind."""
        known = {f.name: f for f in fields(cls)}
        if not isinstance(data, dict):
            return None
        required = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
        if any(n not in data for n in required if n != "name") or not isinstance(data.get("inputs"), dict):
            return None
        rec = cls(**{k: v for k, v in data.items() if k in known and k != "name"}, name=name)
        if not isinstance(rec.outputs, dict) or not isinstance(rec.checks, dict):
            return None
        return rec


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
        data, problem = _read(self.path)
        if data is None:
            backup, _ = _read(self.out_dir / BACKUP_FILE)
            if backup is None:
                raise ManifestError(
                    f"{self.path} is not a readable manifest ({problem}) and its copy {BACKUP_FILE} is gone too. "
                    + _survivors(self.out_dir) + " Move manifest.json aside to recompute every step, "
                    "or use a new --out folder.")
            log.warning("%s is damaged (%s); rebuilt from %s", self.path, problem, BACKUP_FILE)
            data = backup
        if data.get("format") != FORMAT:
            raise ManifestError(f"{self.path} has format {data.get('format')!r}, expected {FORMAT!r}. Use a new --out folder.")
        self.run_info = data.get("run", {}) if isinstance(data.get("run"), dict) else {}
        steps = data.get("steps", {}) if isinstance(data.get("steps"), dict) else {}
        for name, raw in steps.items():
            rec = StepRecord.from_json(name, raw)
            if rec is None:
                log.warning("%s: the record of step %s is incomplete; that step will be redone", self.path, name)
                continue
            self.steps[name] = rec

    def save(self) -> None:
        data = {"format": FORMAT, "run": self.run_info, "steps": {n: asdict(r) for n, r in self.steps.items()}}
        text = json.dumps(data, indent=2)
        atomic_write_text(self.path, text)
        atomic_write_text(self.out_dir / BACKUP_FILE, text)

    def get(self, name: str) -> Optional[StepRecord]:
        return self.steps.get(name)

    def set_run_info(self, info: Dict[str, Any]) -> None:
        self.run_info = info
        self.save()

    def start(self, name: str, inputs: Dict[str, Any]) -> StepRecord:
        rec = StepRecord(name=name, status=RUNNING, inputs=inputs, fingerprint=fingerprint(inputs), started_at=now_iso())
        self.steps[name] = rec
        self.save()
        return rec

    def finish(self, name: str, outputs: Dict[str, str], commands: List[str], elapsed_s: float,
               checks: Optional[Dict[str, str]] = None) -> StepRecord:
        rec = self.steps[name]
        rec.status, rec.outputs, rec.commands = DONE, dict(outputs), list(commands)
        rec.checks = dict(checks or {})
        rec.finished_at, rec.elapsed_s, rec.error = now_iso(), round(elapsed_s, 2), None
        rec.output_id = uuid.uuid4().hex
        self.save()
        return rec

    def fail(self, name: str, error: str, commands: List[str], elapsed_s: float) -> None:
        rec = self.steps[name]
        rec.status, rec.error, rec.commands, rec.elapsed_s = FAILED, error, list(commands), round(elapsed_s, 2)
        self.save()

    def put(self, rec: StepRecord) -> None:
        """Put a record back as it was (a failed redo restored the step's previous results)."""
        self.steps[rec.name] = rec
        self.save()


def _read(path: Path):
    """(the manifest's JSON, None) or (None, what is wrong with it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, str(e)
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, None


# what finished steps leave behind, to name what survives a lost manifest
_RESULTS = ("finetune/checkpoints/partial", "finetune/checkpoints/full", "stage1/run/ckpts/last.ckpt",
            "pseudo_views", "multiview_finetune/checkpoints/multiview", "stage3/run/ckpts/last.ckpt",
            "baseline/run/ckpts/last.ckpt", "results/mesh", "summary.html")


def _survivors(out_dir: Path) -> str:
    found = [r for r in _RESULTS if (out_dir / r).exists()]
    if not found:
        return "The folder holds no finished results."
    return ("The folder still holds " + ", ".join(found) + " (the DreamBooth checkpoints can be used directly: "
            "dreambooth3d finetune --init-checkpoint, system.guidance.checkpoint=...).")
