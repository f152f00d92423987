"""What the terminal shows while the pipeline works, and what goes to the logs instead.

A step's command (threestudio's launch.py, ``dreambooth3d finetune``) writes everything to
its log file: threestudio's and torch's warnings, Lightning's model table, diffusers'
notices. The terminal gets the ``[n/7]`` step lines and one progress bar per step, read
from the progress bars the command itself draws (tqdm's format, which Lightning, diffusers
and our finetune all use), so no child needs to know it is being watched. When a command
fails, :func:`failure_lines` picks the lines that say why (the exception, where it was
raised) out of the log's tail; warnings and progress redraws are left out.

Verbosity (``-v``/``-q``, set once by the CLI): 0 shows step lines and bars; 1 also streams
every line of the commands, as they print them; -1 shows neither (errors still print).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Dict, List, Optional

# tqdm's default layout, "{desc}: {percentage}%|{bar}| {n}/{total} [{elapsed}<{remaining}, ...]";
# an unknown total (an iterable dataset) prints "?" and no percentage
_TQDM = re.compile(r"^\s*(?P<desc>[^|]*?)\s*:?\s*(?:\d+%)?\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+|\?)\s*\[")
# Lightning's RichProgressBar (its default for --test/--export when rich is installed):
# "Testing ━━━━━━━━━━ 4/4 0:00:03 • 0:00:00 1.15it/s"
_RICH = re.compile(r"^\s*(?P<desc>[^━╸╺╾╼]+?)\s+[━╸╺╾╼─ ]*\s(?P<n>\d+)/(?P<total>\d+|\?|--)\s+\d+:\d{2}:\d{2}")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# a Python warning as warnings.showwarning prints it: "path.py:12: SomeWarning: text"
_WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")
# bars that are not the step's work: Lightning's sanity check and validation inside training,
# weight loading/saving in transformers and diffusers; diffusers' unnamed denoising bars
_SIDE = re.compile(r"^(Sanity Checking|Validation|Loading|Writing|Fetching|$)")
# what the user reads instead of the child's bar names
_PHASES = [(re.compile(r"^(Epoch \d+|Training)"), "training"), (re.compile(r"^Testing"), "rendering views"),
           (re.compile(r"^Predicting"), "exporting"), (re.compile(r"^DreamBooth$"), "finetune steps")]


@dataclass(frozen=True)
class BarState:
    """One redraw of a command's progress bar."""

    desc: str
    n: int
    total: Optional[int]  # None: unknown (tqdm's "?")


def parse_bar(segment: str) -> Optional[BarState]:
    """The bar in one redraw (text between carriage returns/newlines), or None if it is not one."""
    text = _ANSI.sub("", segment)
    m = _TQDM.match(text) or _RICH.match(text)
    if m is None:
        return None
    total = int(m["total"]) if m["total"].isdigit() else None
    return BarState(m["desc"].strip(), int(m["n"]), total)


def phase_name(desc: str) -> Optional[str]:
    """The name the terminal shows for a bar's description; None for side bars (validation...)."""
    if _SIDE.match(desc):
        return None
    for pattern, name in _PHASES:
        if pattern.match(desc):
            return name
    return desc or None


def final_lines(text: str) -> List[str]:
    """The text as a person would see it on a terminal: each line's last redraw, no colour codes,
    no progress bars, no blank lines."""
    out = []
    for line in text.split("\n"):
        line = _ANSI.sub("", line.rsplit("\r", 1)[-1] if line.rstrip("\r") else "").rstrip()
        if line.strip() and parse_bar(line) is None:
            out.append(line)
    return out


def _without_warnings(lines: List[str]) -> List[str]:
    """Drop Python warnings and the indented source line the warnings module prints under each."""
    out, skipping = [], False
    for line in lines:
        if _WARNING.match(line):
            skipping = True
            continue
        if skipping and line.startswith((" ", "\t")):
            continue
        skipping = False
        out.append(line)
    return out


def failure_lines(text: str, limit: int = 12) -> List[str]:
    """The lines of a failed command's output that say why it failed.

    With a Python traceback: where the last one was raised (its innermost ``File`` line and
    the code) and the exception text. Without one (a crash, a killed process): the last
    lines that are neither progress bars nor warnings.
    """
    lines = final_lines(text)
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return _without_warnings(lines)[-limit:]
    body = lines[starts[-1] + 1:]
    frames = [i for i, line in enumerate(body) if line.startswith('  File "')]
    last = frames[-1] if frames else -1
    # the exception text starts at the first unindented line after the innermost frame
    exc = next((i for i in range(last + 1, len(body)) if not body[i].startswith((" ", "\t"))), len(body))
    where = [line for line in body[max(last, 0):exc] if line.strip(" ^~")][:2] if frames else []
    message = _without_warnings(body[exc:])
    return (where + message)[: max(limit, len(where) + 1)]


def log_tail(path: Path, start: int = 0, size: int = 1 << 19) -> str:
    """The last ``size`` bytes of a log after offset ``start`` (where the failed command's output
    begins), for :func:`failure_lines`: a traceback sits at the end, and a log can be gigabytes."""
    with open(path, "rb") as f:
        f.seek(max(start, f.seek(0, os.SEEK_END) - size))
        return f.read().decode(errors="replace")


class StepBar:
    """The terminal's progress for one step, fed with the raw output of its commands.

    On a terminal: a tqdm bar that follows the command's main bar (its phase, n and total),
    with side bars (validation, weight loading) ignored. Elsewhere (a pipe, a log file, CI):
    a plain line when a phase starts and at each quarter, so a redirected run stays readable.
    """

    def __init__(self, stream: Optional[IO[str]] = None, tty: Optional[bool] = None, indent: str = "    "):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.indent = indent
        self._pending = ""
        self._phase: Optional[str] = None
        self._total: Optional[int] = None
        self._quarter = -1
        self._n = 0
        self._bar = None
        self._seen: Dict[str, BarState] = {}  # the last redraw of each phase

    def feed(self, data: str) -> None:
        """Output of the command, in whatever chunks it arrives."""
        text = self._pending + data
        *segments, self._pending = re.split(r"[\r\n]", text)
        # a bar's redraw usually arrives whole without a trailing \r or \n: read it now too
        for seg in segments + ([self._pending] if self._pending else []):
            state = parse_bar(seg)
            if state is not None:
                self.update(state)

    def update(self, state: BarState) -> None:
        phase = phase_name(state.desc)
        if phase is None or (state.total is None and state.n == 0):
            return
        if phase != self._phase and self._seen.get(phase) == state:
            return  # an old bar drawn again unchanged (Rich refreshes its last frame): not news
        self._seen[phase] = state
        if phase != self._phase or state.total != self._total or state.n < self._n:
            self._start(phase, state.total)  # a new phase, or the same one started over (next epoch)
        if self.tty:
            self._bar.update(state.n - self._n)
        elif state.total and 4 * state.n // state.total > self._quarter:
            self._quarter = 4 * state.n // state.total
            self._line(f"{phase}: {state.n}/{state.total}")
        self._n = state.n

    def _start(self, phase: str, total: Optional[int]) -> None:
        self.close()
        self._phase, self._total, self._quarter, self._n = phase, total, -1, 0
        if self.tty:
            from tqdm import tqdm

            sized = shutil.get_terminal_size((0, 0)).columns > 0  # a pty without a size draws nothing
            self._bar = tqdm(total=total, desc=self.indent + phase, file=self.stream, leave=False,
                             dynamic_ncols=sized, ncols=None if sized else 100,
                             nrows=None if sized else 24, unit="it")
        elif not total:
            self._line(f"{phase}...")

    def _line(self, text: str) -> None:
        self.stream.write(f"{self.indent}{text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Console:
    """The ``run`` command's terminal: step lines and bars at verbosity 0 (see the module doc)."""

    def __init__(self, verbosity: int = 0, out: Optional[IO[str]] = None, err: Optional[IO[str]] = None):
        self.verbosity = verbosity
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr

    def step(self, text: str) -> None:
        """A ``[n/7] step: ...`` line (not under ``-q``)."""
        if self.verbosity >= 0:
            print(text, file=self.out, flush=True)

    def bar(self) -> Optional[StepBar]:
        """A bar for the next command, or None when the command's own output is shown or nothing is."""
        return StepBar(self.err) if self.verbosity == 0 else None

    @property
    def stream_output(self) -> bool:
        return self.verbosity > 0

    def child_env(self) -> Dict[str, str]:
        """Environment for a command: Rich (Lightning's bar for --test/--export) draws its bar only
        at the end unless told it writes to a terminal; the bar reader needs the live redraws (and
        a log without colour codes). What the user set wins."""
        env = {}
        if self.verbosity == 0:
            env = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
        elif self.verbosity > 0 and self.out.isatty():
            env = {"TTY_COMPATIBLE": "1"}
        return {k: v for k, v in env.items() if k not in os.environ}
