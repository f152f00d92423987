"""Run the steps in order, skipping what the manifest says is done with the same inputs.

A step runs when: it never ran; it was interrupted or failed; ``--from`` names it or
an earlier step; an upstream step is being redone; its inputs changed; or one of its
recorded outputs is gone. Before a step runs, what it writes is removed (a clean
restart), except that a *resumable* step interrupted with unchanged inputs continues
from its own saved state (the DreamBooth trainer checks that state belongs to the run).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import DiskFullError, StepFailedError
from ..formats import format_duration
from ..fs import content_fingerprint, raise_if_disk_full
from ..log_routing import warnings_to_log
from .commands import Command
from .console import Console, failure_lines, log_tail
from .context import RunContext
from .manifest import DONE, FAILED, RUNNING, Manifest, fingerprint
from .steps import STEPS, Step, step_name

Executor = Callable[[Command, Path], None]
_DISK_FULL = re.compile(r"No space left on device|ENOSPC|not enough free disk space", re.I)
NOT_RUN_YET = "not run yet"  # the reason of a step with no record (a dry run prints it)


@dataclass
class Decision:
    step: Step
    run: bool
    reason: str
    resume: bool = False  # continue from the step's own saved state instead of wiping it


def execute(cmd: Command, log_path: Path, console: Optional[Console] = None) -> None:
    """Run ``cmd`` with all its output in ``log_path``; the terminal gets what ``console`` shows
    (a progress bar read from that output; every line under ``-v``). A failure raises with the
    lines that say why and the log's path."""
    console = console if console is not None else Console()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **console.child_env(), **cmd.env, "PYTHONUNBUFFERED": "1"}
    out = getattr(sys.stdout, "buffer", None) if console.stream_output else None
    bar = console.bar()
    with open(log_path, "wb") as log:
        header = log.write(("$ " + cmd.shell() + "\n").encode())
        proc = subprocess.Popen(cmd.argv, cwd=cmd.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=_own_group_dying_with_parent)
        try:
            # raw chunks, not lines: tqdm and Lightning redraw their bars with \r
            for chunk in iter(lambda: os.read(proc.stdout.fileno(), 1 << 14), b""):
                log.write(chunk)
                log.flush()  # a user tailing the log sees it live
                if bar is not None:
                    bar.feed(chunk.decode(errors="replace"))
                elif out is not None:
                    out.write(chunk)
                    out.flush()
                elif console.stream_output:
                    sys.stdout.write(chunk.decode(errors="replace"))
            code = proc.wait()
        except BaseException:
            stop_group(proc)
            raise
        finally:
            if bar is not None:
                bar.close()
    if code != 0:
        text = log_tail(log_path, start=header)
        if _DISK_FULL.search(text):
            raise DiskFullError(f"No space left on the disk while running {cmd.log_name} (see {log_path}). "
                                "Free some space and rerun the same command: finished steps are kept.")
        if "TrainingDivergedError" in text:  # deterministic: the same options diverge again
            advice = (f"The same command would diverge again: lower the learning rate, e.g. --set "
                      f"{cmd.log_name}:--lr=1e-5 (or drop mixed precision: --set {cmd.log_name}:--mixed-precision=no), "
                      "then rerun: finished steps are kept.")
        else:
            advice = "Fix the cause and rerun the same command: finished steps are kept."
        raise StepFailedError(
            f"{cmd.log_name} failed (exit code {code}):\n    " + "\n    ".join(failure_lines(text))
            + f"\nFull log: {log_path}\n{advice}"
        )


def _own_group_dying_with_parent() -> None:
    """In the child before exec: its own process group (so Ctrl-C/SIGTERM handling can stop it
    with everything it started), and SIGKILL the moment this process dies without stopping it
    (``kill -9``; Linux): its folder's lock is gone then, and a next run must not meet it writing."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the child's process group (launch.py, its data loader workers...), SIGKILL to
    what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
            try:  # the leader is gone; its group may still hold children
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


class Runner:
    def __init__(self, ctx: RunContext, steps: Sequence[Step] = STEPS, executor: Optional[Executor] = None,
                 console: Optional[Console] = None):
        self.ctx = ctx
        self.steps = list(steps)
        self.console = console if console is not None else Console()
        self.executor = executor or functools.partial(execute, console=self.console)
        self.manifest = Manifest(ctx.out)
        self.current: Optional[str] = None  # the step running now (named when interrupted)

    # -- deciding ----------------------------------------------------------------------
    def inputs(self, step: Step) -> Dict:
        upstream = {}
        for name in step.upstream:
            rec = self.manifest.get(name)
            upstream[name] = rec.output_id if rec is not None and rec.status == DONE else None
        return {**step.inputs(self.ctx), "upstream": upstream}

    def plan(self, start_from: Optional[str] = None) -> List[Decision]:
        names = [s.name for s in self.steps]
        forced_from = names.index(step_name(start_from)) if start_from else len(names)
        redo: set = set()
        decisions = []
        for i, step in enumerate(self.steps):
            rec = self.manifest.get(step.name)
            d = self._decide(step, rec, i >= forced_from, start_from, redo)
            if d.run:
                redo.add(step.name)
            decisions.append(d)
        return decisions

    def _decide(self, step, rec, forced, start_from, redo) -> Decision:
        if forced:
            return Decision(step, True, f"forced by --from {start_from}")
        if rec is None:
            return Decision(step, True, NOT_RUN_YET)
        changed = [u for u in step.upstream if u in redo]
        if changed:
            return Decision(step, True, f"{', '.join(changed)} is being redone")
        inputs = self.inputs(step)
        same = fingerprint(inputs) == rec.fingerprint
        if rec.status == RUNNING:
            if same and step.resumable:
                return Decision(step, True, "interrupted last time; resuming", resume=True)
            return Decision(step, True, "interrupted last time; restarting cleanly")
        if rec.status == FAILED:
            return Decision(step, True, "failed last time")
        if not same:
            return Decision(step, True, "inputs changed: " + ", ".join(_diff(rec.inputs, inputs)))
        missing = [p for p in rec.outputs.values() if not (self.ctx.out / p).exists()]
        if missing:
            return Decision(step, True, f"output missing: {missing[0]}")
        damaged = [rec.outputs[label] for label, check in rec.checks.items()
                   if label in rec.outputs and content_fingerprint(self.ctx.out / rec.outputs[label]) != check]
        if damaged:
            return Decision(step, True, f"output damaged: {damaged[0]} changed since the step finished")
        return Decision(step, False, "done, inputs unchanged")

    # -- doing -------------------------------------------------------------------------
    def run(self, start_from: Optional[str] = None) -> Manifest:
        decisions = self.plan(start_from)
        total = len(decisions)
        for i, d in enumerate(decisions, 1):
            head = f"[{i}/{total}] {d.step.name}"
            if not d.run:
                self.console.step(f"{head}: skipped ({d.reason})")
                continue
            # a fresh step says it is starting; a redo says why
            self.console.step(f"{head}: {d.step.title}: starting" + ("" if d.reason == NOT_RUN_YET else f" ({d.reason})"))
            self.current = d.step.name
            elapsed = self._run_step(d)
            self.current = None
            self.console.step(f"{head}: done in {format_duration(elapsed)}")
        return self.manifest

    def _run_step(self, d: Decision) -> float:
        """Run one step. Unless it resumes, what it writes is first moved aside (OUT/.previous/STEP);
        if it then fails (or, not being resumable, is interrupted) while its previous results were
        complete, they are put back with their record, so a failed redo loses nothing."""
        step, ctx = d.step, self.ctx
        previous = self.manifest.get(step.name)
        previous = previous if previous is not None and previous.status == DONE else None
        aside = [] if d.resume else _move_aside(step.work_paths(ctx), ctx.out / PREVIOUS_DIR / step.name)
        self.manifest.start(step.name, self.inputs(step))
        commands: List[str] = []

        def run_command(cmd: Command) -> None:
            commands.append(cmd.shell())
            self.executor(cmd, ctx.logs_dir / f"{cmd.log_name}.log")

        t0 = time.monotonic()
        try:
            # warnings raised here (mesh rendering, the summary) join the step's log, not the terminal
            with warnings_to_log(ctx.logs_dir / f"{step.name}.log", show=self.console.stream_output):
                outputs = step.run(ctx, run_command)
        except KeyboardInterrupt:
            # the record stays "running": the next run resumes a resumable step from its new state
            if step.resumable or previous is None:
                _discard(aside)
            else:
                self._restore(aside, previous)
            raise
        except Exception as e:
            self.manifest.fail(step.name, str(e), commands, time.monotonic() - t0)
            if previous is not None and aside:
                self._restore(aside, previous)
                self.console.step(f"{step.name} failed; its previous results are back in place")
            else:
                _discard(aside)
            raise
        elapsed = time.monotonic() - t0
        rel = {k: ctx.rel(v) for k, v in outputs.items()}
        checks = {k: content_fingerprint(ctx.out / p) for k, p in rel.items()} if step.check_outputs else {}
        self.manifest.finish(step.name, rel, commands, elapsed, checks)
        _discard(aside)
        return elapsed

    def _restore(self, aside: List[Tuple[Path, Path]], previous) -> None:
        for original, moved in aside:
            _remove(original)  # what the failed attempt wrote there
            original.parent.mkdir(parents=True, exist_ok=True)
            moved.rename(original)
        _discard(aside)
        self.manifest.put(previous)


PREVIOUS_DIR = ".previous"  # OUT/.previous/STEP: a step's previous results while it is redone


def _move_aside(paths: Sequence[Path], folder: Path) -> List[Tuple[Path, Path]]:
    """Move each existing path into ``folder`` (a rename: same disk, no copy); [(original, moved)]."""
    _remove(folder)  # left by a run killed during a redo: its step restarts cleanly
    moved = []
    for i, path in enumerate(paths):
        if path.is_symlink() or path.exists():
            target = folder / f"{i}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
            moved.append((path, target))
    return moved


def _discard(aside: List[Tuple[Path, Path]]) -> None:
    for _, moved in aside:
        _remove(moved)
    if aside:
        shutil.rmtree(aside[0][1].parent, ignore_errors=True)
        try:
            aside[0][1].parent.parent.rmdir()  # OUT/.previous, once empty
        except OSError:
            pass


def _remove(path: Path) -> None:
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    except OSError as e:
        raise_if_disk_full(e, path)
        raise


def _diff(old: Dict, new: Dict) -> List[str]:
    """Which inputs differ, named for a person ("command", "subject_sha256", "upstream stage1")."""
    keys = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "upstream" and isinstance(old.get(k), dict) and isinstance(new.get(k), dict):
            keys += [f"upstream {u}" for u in sorted(set(old[k]) | set(new[k])) if old[k].get(u) != new[k].get(u)]
        elif k == "subject_sha256":
            keys.append("subject photos")
        elif k == "command":
            keys.append("options")
        else:
            keys.append(k)
    return keys or ["format"]
