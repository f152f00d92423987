"""The cells of a sweep: subject x prompt x method, each one ``dreambooth3d run`` + ``eval``.

A cell's output folder is an ordinary ``run`` output folder, so the run's manifest makes
the cell resumable: an interrupted cell continues where it stopped. On top of that the
cell function writes ``CELL/cell.json`` (status, times, log). A cell is *finished* when
that record says ``done`` for the same commands and photos (its fingerprint) and its
``eval.json`` exists; a rerun of the sweep skips finished cells without starting any
process and retries the others (failed, interrupted, never run, or changed).

Each cell's seed is a hash of the sweep's base seed and the cell's key (subject, prompt,
method), so it does not depend on which cells run, in which order or where.

Layout::

    SWEEP/sweep.json                          the plan (options, every cell)
    SWEEP/progress.json                       done / running / failed / pending, times
    SWEEP/cells/<subject>/<prompt>/<method>/  one run's output folder, plus
        cell.json  cell.log  eval/eval.json   the cell's record, its log, its scores
    SWEEP/prompts/<subject>.txt               the prompts R-precision retrieves among for the
                                              subject: its sweep prompts + the dataset's list
                                              for its class (docs/EVALUATION.md)
    SWEEP/report/                             table, per-subject CSV/JSON, index.html
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .dataset import Subject, fill_template
from ..errors import MissingFileError, SweepInputError
from ..formats import slug
from ..fs import fingerprint

CELL_JSON = "cell.json"
CELL_LOG = "cell.log"
EVAL_DIR = "eval"
SWEEP_JSON = "sweep.json"
PROGRESS_JSON = "progress.json"
PROMPTS_DIR = "prompts"
DONE, FAILED, RUNNING, PENDING = "done", "failed", "running", "pending"
CLI = ["-m", "threestudio_dreambooth3d.cli"]


def cell_seed(base_seed: int, subject: str, prompt: str, method: str) -> int:
    """The cell's own seed: a hash of its key, so results do not depend on scheduling."""
    digest = hashlib.sha256(json.dumps([base_seed, subject, prompt, method]).encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1)


@dataclass
class SweepOptions:
    """What every cell's ``run`` and ``eval`` get besides subject, prompt, method and seed."""

    out: Path
    preset: str = "default"
    model: Optional[str] = None
    identifier: str = "sks"
    seed: int = 0
    threestudio: Optional[str] = None
    configs: Optional[str] = None
    overrides: List[str] = field(default_factory=list)  # `run --set` items
    clip_models: Optional[List[str]] = None  # None: eval's defaults (the paper's three)
    dino_model: Optional[str] = None
    distractors: Optional[str] = None
    python: str = sys.executable


@dataclass
class Cell:
    subject: str
    subject_dir: str
    class_noun: str
    template: str
    prompt: str
    method: str
    seed: int
    out: str  # the cell's run output folder
    run_argv: List[str]
    eval_argv: List[str]
    fingerprint: str

    @property
    def key(self) -> str:
        return f"{self.subject}/{slug(self.prompt)}/{self.method}"

    @property
    def record_path(self) -> Path:
        return Path(self.out) / CELL_JSON

    @property
    def log_path(self) -> Path:
        return Path(self.out) / CELL_LOG

    @property
    def eval_json(self) -> Path:
        return Path(self.out) / EVAL_DIR / "eval.json"


def cell_dir(out: Path, subject: str, prompt: str, method: str) -> Path:
    return Path(out).resolve() / "cells" / subject / slug(prompt) / method


def run_argv(opts: SweepOptions, subject: Subject, prompt: str, method: str, seed: int, out: Path) -> List[str]:
    argv = [opts.python, *CLI, "run", "--subject", str(subject.folder), "--class-noun", subject.class_noun,
            "--prompt", prompt, "--identifier", opts.identifier, "--out", str(out), "--seed", str(seed),
            "--preset", opts.preset, "--method", method]
    argv += ["--model", opts.model] if opts.model else []
    argv += ["--threestudio", str(opts.threestudio)] if opts.threestudio else []
    argv += ["--configs", str(opts.configs)] if opts.configs else []
    for item in opts.overrides:
        argv += ["--set", item]
    return argv


def prompt_set_path(opts: SweepOptions, subject: Subject) -> Path:
    return Path(opts.out).resolve() / PROMPTS_DIR / f"{subject.name}.txt"


def subject_prompt_set(opts: SweepOptions, subject: Subject, templates: Sequence[str]) -> List[str]:
    """The subject's prompts R-precision retrieves among: the sweep's, then the DreamBooth
    dataset's list for its class (the paper's evaluation prompts), each once."""
    from ..evaluation.prompt_sets import dataset_prompts

    filled = [fill_template(t, opts.identifier, subject.class_noun) for t in templates]
    return list(dict.fromkeys(filled + dataset_prompts(subject.class_noun, opts.identifier)))


def write_prompt_sets(opts: SweepOptions, subjects: Sequence[Subject], prompts: Dict[str, List[str]]) -> None:
    """``SWEEP/prompts/<subject>.txt`` for every subject (eval reads it with --prompts)."""
    from ..fs import atomic_write_text

    for s in subjects:
        path = prompt_set_path(opts, s)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "\n".join(subject_prompt_set(opts, s, prompts[s.name])) + "\n")


def eval_argv(opts: SweepOptions, subject: Subject, prompt: str, out: Path) -> List[str]:
    argv = [opts.python, *CLI, "eval", "--run", str(out), "--subject", str(subject.folder), "--prompt", prompt,
            "--class-noun", subject.class_noun, "--prompts", str(prompt_set_path(opts, subject)),
            "--identifier", opts.identifier, "--out", str(out / EVAL_DIR)]
    argv += ["--preset", "smoke"] if opts.preset == "smoke" else []  # eval's tiny models, unless named below
    argv += ["--clip-models", *opts.clip_models] if opts.clip_models else []
    argv += ["--dino-model", opts.dino_model] if opts.dino_model else []
    argv += ["--distractors", str(opts.distractors)] if opts.distractors else []
    return argv


def _fingerprint(run: List[str], evaluation: List[str], photos_sha256: str, prompt_set: Sequence[str]) -> str:
    # argv[0] is the interpreter: a new venv is not a new input; the prompt set is read from a file
    return fingerprint([run[1:], evaluation[1:], photos_sha256, list(prompt_set)])


def plan_cells(opts: SweepOptions, subjects: Sequence[Subject], prompts: Dict[str, List[str]],
               methods: Sequence[str], photos_sha256: Dict[str, str]) -> List[Cell]:
    """Every cell, subject-major (``prompts[subject.name]`` are that subject's templates)."""
    cells = []
    for s in subjects:
        prompt_set = subject_prompt_set(opts, s, prompts[s.name])
        for template in prompts[s.name]:
            prompt = fill_template(template, opts.identifier, s.class_noun)
            for method in methods:
                seed = cell_seed(opts.seed, s.name, prompt, method)
                out = cell_dir(opts.out, s.name, prompt, method)
                r = run_argv(opts, s, prompt, method, seed, out)
                e = eval_argv(opts, s, prompt, out)
                cells.append(Cell(s.name, str(s.folder), s.class_noun, template, prompt, method, seed, str(out),
                                  r, e, _fingerprint(r, e, photos_sha256.get(s.name, ""), prompt_set)))
    keys = [c.key for c in cells]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise SweepInputError(f"two cells share the key {dup!r} (the same prompt twice?); remove the duplicate.")
    return cells


def read_record(cell: Cell) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(cell.record_path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(cell: Cell) -> bool:
    rec = read_record(cell)
    return (rec is not None and rec.get("status") == DONE and rec.get("fingerprint") == cell.fingerprint
            and cell.eval_json.is_file())


def write_plan(out: Path, opts: SweepOptions, cells: Sequence[Cell], extra: Dict[str, Any]) -> Path:
    path = Path(out) / SWEEP_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": "dreambooth3d-sweep/1", **extra,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
            "cells": [{**asdict(c), "key": c.key} for c in cells]}
    path.write_text(json.dumps(data, indent=2))
    return path


def read_plan(out: Path) -> List[Cell]:
    path = Path(out) / SWEEP_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MissingFileError(f"{path} is not a sweep plan ({e}); run `dreambooth3d sweep` with --out {out} first.") from e
    return [Cell(**{k: v for k, v in c.items() if k != "key"}) for c in data["cells"]]
