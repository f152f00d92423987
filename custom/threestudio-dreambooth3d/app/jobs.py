"""The web app's jobs, without Gradio: one resumable ``dreambooth3d run`` per folder, one at a time per GPU.

A job is the inputs of one run (photos, class noun, prompt, preset, method). Its folder under the
app's out-root is named by a hash of those inputs (the photos' bytes, not their names), so the same
photos and prompt land in the same folder and ``run`` resumes there instead of recomputing. The
folder holds ``job.json`` (inputs and state), ``subject/`` (the photos under sanitised names),
``run.out`` (the run's terminal output) and ``out/`` (the run's output folder: manifest, logs,
results/, summary.html).

Each job runs as one ``dreambooth3d run`` subprocess in a process group of its own: Stop sends the
group SIGINT (``run`` records the step as interrupted and exits 130; the step's own command stops
too), then SIGTERM and SIGKILL if it lingers. The job stays resumable. The run's output goes to a
file, not a pipe, so progress is read from files and a restarted server sees the same thing.

States in ``job.json``: queued, running, finished, failed, stopped (by Stop), unfinished (cut off).
A new server lists every job it finds: finished and failed as they were, the rest as unfinished
(Resume continues them). A run an old server left behind (it was killed, not stopped) is stopped
first, so that only one run ever writes into a folder.
"""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigError, DreamBooth3DError, MachineError, SubjectImageError
from ..fs import atomic_write_text, fingerprint
from ..pipeline.console import failure_lines, final_lines, parse_bar, phase_name
from ..sweep.executors import visible_gpus

JOB_FILE = "job.json"
OUTPUT_FILE = "run.out"
FORMAT = "dreambooth3d-app-job/1"
QUEUED, RUNNING, FINISHED, FAILED, STOPPED, UNFINISHED = "queued", "running", "finished", "failed", "stopped", "unfinished"
ACTIVE = (QUEUED, RUNNING)
_STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\] ")
# run's non-terminal bar lines ("    training: 5/20", "    exporting..."), see console.StepBar
_PLAIN_BAR = re.compile(r"^\s{2,}(?P<phase>[^:]+?)(?::\s*(?P<n>\d+)/(?P<total>\d+)|\.\.\.)$")

PathLike = Union[str, Path]


# -- inputs -------------------------------------------------------------------------------------

def safe_name(name: str, index: int) -> str:
    """An uploaded file's name as stored: its last path part, letters/digits/``._-`` only, no leading
    dot, at most 64 characters; a numeric prefix keeps the upload order and makes names unique."""
    base = re.split(r"[\\/]", name)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_.")[:48] or "photo"
    ext = re.sub(r"[^A-Za-z0-9]+", "", ext).lower()[:8]
    return f"{index:02d}_{stem}" + (f".{ext}" if ext else "")


@dataclass(frozen=True)
class JobInputs:
    class_noun: str
    prompt: str
    preset: str
    method: str
    photos_sha256: Tuple[str, ...]  # one per photo, sorted: the upload order does not matter

    @property
    def job_id(self) -> str:
        return fingerprint(asdict(self))[:16]


def check_text_inputs(class_noun: str, prompt: str, preset: str, method: str) -> List[str]:
    """run's checks of the options (errors raise); returns run's warnings (a prompt without the identifier)."""
    from ..pipeline.checks import check_prompt
    from ..pipeline.context import METHODS
    from ..pipeline.presets import get_preset

    if not class_noun.strip():
        raise ConfigError("class noun is empty: say what the subject is, e.g. dog, backpack, toy")
    if not prompt.strip():
        raise ConfigError("prompt is empty: describe what to make, e.g. 'a sks toy on a table'")
    get_preset(preset)
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    warning = check_prompt(prompt.strip(), "sks", class_noun.strip())
    return [warning] if warning else []


def check_photos(folder: Path) -> List[str]:
    """run's photo checks on the stored photos; errors name the photo, not the server's folder."""
    from ..pipeline.checks import check_subject

    try:
        return [w.replace(str(folder), "the upload") for w in check_subject(folder)]
    except SubjectImageError as e:
        raise SubjectImageError(str(e).replace(str(folder) + os.sep, "").replace(str(folder), "the upload")) from e


def environment_problem(preset: str, out_root: Path) -> Optional[str]:
    """``dreambooth3d doctor``'s table of what this machine lacks for ``preset``, or None."""
    from ..environment.doctor import MISSING, format_table, run_checks

    missing = [r for r in run_checks(preset, out=out_root) if r.status == MISSING]
    if not missing:
        return None
    return (f"this machine lacks what --preset {preset} needs:\n" + format_table(missing)
            + "\n`dreambooth3d doctor` shows every check.")


# -- progress and results ----------------------------------------------------------------------

@dataclass
class Progress:
    step: str = ""  # the last "[n/7] step: ..." line
    bar: str = ""  # the current step's bar, drawn as text


def draw_bar(phase: str, n: int, total: Optional[int], width: int = 24) -> str:
    if not total:
        return f"{phase}: {n}"
    filled = min(width, width * n // total)
    return f"{phase}: [{'#' * filled}{'.' * (width - filled)}] {n}/{total} ({100 * n // total}%)"


def last_bar(text: str) -> Optional[str]:
    """The newest redraw of a step command's own bar (tqdm/Rich, as in its log), drawn as text;
    side bars (validation, weight loading) are skipped as the terminal skips them."""
    for seg in reversed(re.split(r"[\r\n]", text)):
        state = parse_bar(seg)
        if state is None:
            continue
        phase = phase_name(state.desc)
        if phase is not None and not (state.total is None and state.n == 0):
            return draw_bar(phase, state.n, state.total)
    return None


def read_progress(run_output: str, step_log: Optional[str] = None) -> Progress:
    """The step line and bar from run's terminal output, the bar refined from the step's own log
    (run prints its bar only at quarters when it does not write to a terminal)."""
    lines = final_lines(run_output)
    steps = [i for i, line in enumerate(lines) if _STEP_LINE.match(line)]
    if not steps:
        return Progress()
    step = lines[steps[-1]]
    bar = ""
    if re.search(r": done in \S+$|: skipped \(", step):
        return Progress(step, "")  # a finished or skipped step has no bar
    for line in lines[steps[-1] + 1:]:
        m = _PLAIN_BAR.match(line)
        if m:
            bar = draw_bar(m["phase"], int(m["n"]), int(m["total"])) if m["n"] else f"{m['phase']}..."
    if step_log:
        bar = last_bar(step_log) or bar
    return Progress(step, bar)


def tail_text(path: Path, start: int = 0, size: int = 1 << 18) -> str:
    """The last ``size`` bytes of a file after byte ``start``; '' if it is missing."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# -- one job ------------------------------------------------------------------------------------

@dataclass
class Job:
    dir: Path
    inputs: JobInputs
    photos: List[str]
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    exit_code: Optional[int] = None
    pid: Optional[int] = None
    gpu: Optional[str] = None  # the CUDA_VISIBLE_DEVICES it ran with (None: the CPU)
    output_offset: int = 0  # where this attempt's output starts in run.out
    attempts: int = 0
    message: str = ""  # why it is not running (a stop, a problem found before the start)

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def out(self) -> Path:
        return self.dir / "out"

    @property
    def subject(self) -> Path:
        return self.dir / "subject"

    @property
    def output_path(self) -> Path:
        return self.dir / OUTPUT_FILE

    def save(self) -> None:
        data = {"format": FORMAT, "inputs": {**asdict(self.inputs), "photos": self.photos},
                **{k: getattr(self, k) for k in ("state", "created", "exit_code", "pid", "gpu", "output_offset",
                                                 "attempts", "message")}}
        atomic_write_text(self.dir / JOB_FILE, json.dumps(data, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "Job":
        data = json.loads((folder / JOB_FILE).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        inp = dict(data["inputs"])
        photos = inp.pop("photos")
        inputs = JobInputs(**{**inp, "photos_sha256": tuple(inp["photos_sha256"])})
        keep = {k: data[k] for k in ("state", "created", "exit_code", "pid", "gpu", "output_offset", "attempts",
                                     "message") if k in data}
        return cls(dir=folder, inputs=inputs, photos=photos, **keep)

    # -- what the page shows
    def output(self) -> str:
        return tail_text(self.output_path, self.output_offset)

    def manifest_outputs(self) -> Dict[str, Dict[str, str]]:
        """Per step, the outputs the run's manifest records (label -> path in out/); {} before any."""
        try:
            steps = json.loads((self.out / "manifest.json").read_text()).get("steps", {})
        except (OSError, ValueError):
            return {}
        return {name: rec.get("outputs", {}) for name, rec in steps.items() if rec.get("status") == "done"}

    def result(self, step: str, label: str) -> Optional[Path]:
        rel = self.manifest_outputs().get(step, {}).get(label)
        path = self.out / rel if rel else None
        return path if path is not None and path.exists() else None

    def progress(self) -> Progress:
        logs = [p for p in (self.out / "logs").glob("*.log") if p.name != "run.log"]
        newest = max(logs, key=lambda p: p.stat().st_mtime, default=None) if self.state == RUNNING else None
        return read_progress(self.output(), tail_text(newest, size=1 << 16) if newest else None)

    def pseudo_views(self) -> Optional[Path]:
        return self.result("stage2", "contact_sheet")

    def turntable(self) -> Optional[Path]:
        for step in ("stage3", "baseline", "stage1"):
            video = self.result(step, "turntable")
            if video is not None:
                return video
        return None

    def glb(self) -> Optional[Path]:
        return self.result("export", "glb")

    def summary(self) -> Optional[Path]:
        return self.result("summary", "html")

    def download(self) -> Optional[Path]:
        """``results.zip``: the run's results/ and summary.html, built once the summary exists."""
        summary = self.summary()
        if summary is None:
            return None
        target = self.dir / "results.zip"
        if target.is_file() and target.stat().st_mtime >= summary.stat().st_mtime:
            return target
        tmp = target.with_name(f".results-{uuid.uuid4().hex[:8]}.zip")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            z.write(summary, summary.name)
            results = self.out / "results"
            for p in sorted(results.rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(self.out).as_posix())
        os.replace(tmp, target)
        return target

    def failure(self) -> str:
        """Where a failed run stopped, its error and its last lines (failure_lines); '' otherwise."""
        if self.state != FAILED:
            return ""
        text = self.output()
        try:
            steps = json.loads((self.out / "manifest.json").read_text()).get("steps", {})
        except (OSError, ValueError):
            steps = {}
        failed = [n for n, r in steps.items() if r.get("status") == "failed"]
        where = f"failed at step {failed[-1]}" if failed else "failed before any step ran"
        lines = failure_lines(text)
        return "\n".join([f"{where} (exit code {self.exit_code})", *lines, "", f"full output: {self.output_path}"])

    def describe(self) -> str:
        i = self.inputs
        return f"{i.prompt!r} ({i.class_noun}, {len(self.photos)} photos, preset {i.preset}, {i.method})"


# -- the queue ---------------------------------------------------------------------------------

ArgvFor = Callable[[Job], List[str]]


def run_argv(job: Job) -> List[str]:
    """The ``dreambooth3d run`` command of a job (the same every time: a rerun resumes)."""
    i = job.inputs
    return [sys.executable, "-m", "threestudio_dreambooth3d.cli", "run", "--subject", str(job.subject),
            "--class-noun", i.class_noun, "--prompt", i.prompt, "--preset", i.preset, "--method", i.method,
            "--out", str(job.out)]


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has finished
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _runs_in(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` is a run on ``folder`` (not another program that got the number since)."""
    try:
        return str(folder) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return os.name == "posix" and not Path("/proc/self").exists()  # no /proc to ask: trust the record


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_group(pgid: int, wait: Callable[[float], bool], grace: float = 30.0) -> None:
    """SIGINT to the whole group (run marks its step interrupted and exits 130), then SIGTERM, then
    SIGKILL; ``wait(seconds)`` says whether the run has exited."""
    for sig, timeout in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        if wait(timeout):
            # the run is gone; its step command may still be closing
            deadline = time.monotonic() + timeout
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _group_alive(pgid):
                return


class JobManager:
    """The jobs under ``out_root`` and the workers that run them, one per slot (GPU)."""


    def __init__(self, out_root: PathLike, slots: Optional[Sequence[Optional[str]]] = None, argv_for: ArgvFor = run_argv,
                 env: Optional[Dict[str, str]] = None, check_environment: Callable[[str, Path], Optional[str]]
                 = environment_problem, stop_grace: float = 30.0):
        self.out_root = Path(out_root).resolve()
        self.out_root.mkdir(parents=True, exist_ok=True)
        # one slot per visible GPU, as the sweep's local executor; None: the CPU (or what the environment pins)
        self.slots = list(slots) if slots else (visible_gpus() or [None])
        self.argv_for = argv_for
        self.env = env
        self.check_environment = check_environment
        self.stop_grace = stop_grace
        self.jobs: Dict[str, Job] = {}
        self.queue: Deque[str] = collections.deque()
        self.procs: Dict[str, subprocess.Popen] = {}
        self.stopping: set = set()
        self.cond = threading.Condition()
        self.closed = False
        self.scan()
        self.workers = [threading.Thread(target=self._work, args=(gpu,), daemon=True, name=f"job-slot-{gpu}")
                        for gpu in self.slots]
        for w in self.workers:
            w.start()

    # -- listing
    def scan(self) -> List[Job]:
        """Read every job folder; a job the last server did not finish becomes unfinished (a run it
        left behind is stopped first)."""
        for folder in sorted(self.out_root.iterdir()):
            if folder.name in self.jobs or not (folder / JOB_FILE).is_file():
                continue
            try:
                job = Job.load(folder)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a job of this app (or a damaged one): leave it alone
            if job.state in ACTIVE and job.pid and _alive(job.pid) and _runs_in(job.pid, job.out):
                stop_group(job.pid, lambda t, pid=job.pid: _wait_pid(pid, t), self.stop_grace)
            if job.state in (*ACTIVE, STOPPED):
                if job.state in ACTIVE:
                    job.message = "cut off when the app stopped; Resume continues where it stopped"
                job.state, job.pid = UNFINISHED, None
                job.save()
            self.jobs[job.id] = job
        return self.list()

    def list(self) -> List[Job]:
        return sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)

    def get(self, job_id: str) -> Job:
        return self.jobs[job_id]

    def position(self, job_id: str) -> Optional[int]:
        """1 for the next job to start; None when not queued."""
        with self.cond:
            return self.queue.index(job_id) + 1 if job_id in self.queue else None

    # -- making jobs
    def create(self, photos: Sequence[Tuple[str, PathLike]], class_noun: str, prompt: str, preset: str,
               method: str) -> Tuple[Job, List[str]]:
        """The job for these inputs after run's checks (errors raise before anything is stored): the
        existing one when the same photos, class noun, prompt, preset and method were seen before."""
        import hashlib

        class_noun, prompt = class_noun.strip(), prompt.strip()
        warnings = check_text_inputs(class_noun, prompt, preset, method)
        if not photos:
            raise SubjectImageError("no photos: add 3-6 photos of the subject (png/jpg/webp)")
        data = [(safe_name(name, i), Path(path).read_bytes()) for i, (name, path) in enumerate(photos)]
        inputs = JobInputs(class_noun, prompt, preset, method,
                           tuple(sorted(hashlib.sha256(b).hexdigest() for _, b in data)))
        folder = self.out_root / inputs.job_id
        with self.cond:
            if inputs.job_id in self.jobs:
                return self.jobs[inputs.job_id], warnings
        staging = self.out_root / f".new-{uuid.uuid4().hex[:8]}"
        try:
            (staging / "subject").mkdir(parents=True)
            for name, b in data:
                (staging / "subject" / name).write_bytes(b)
            warnings += check_photos(staging / "subject")
            job = Job(dir=staging, inputs=inputs, photos=[n for n, _ in data], state=UNFINISHED,
                      message="not started yet")
            job.save()
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        job = Job.load(folder)
        with self.cond:
            job = self.jobs.setdefault(job.id, job)
        return job, warnings

    # -- running
    def submit(self, job_id: str) -> Job:
        """Queue a job (a no-op when it is queued, running or finished); the machine is checked first."""
        job = self.jobs[job_id]
        with self.cond:
            if job.state in ACTIVE or job.state == FINISHED:
                return job
        problem = self.check_environment(job.inputs.preset, self.out_root)
        if problem:
            raise MachineError(problem)
        with self.cond:
            if job.state in ACTIVE or job.state == FINISHED:
                return job
            job.state, job.message, job.exit_code = QUEUED, "", None
            job.save()
            self.queue.append(job_id)
            self.cond.notify_all()
        return job

    def stop(self, job_id: str) -> Job:
        """A queued job leaves the queue; a running one's process group is stopped. Both stay resumable."""
        job = self.jobs[job_id]
        with self.cond:
            if job_id in self.queue:
                self.queue.remove(job_id)
                job.state, job.message = STOPPED, "stopped before it started"
                job.save()
                return job
            proc = self.procs.get(job_id)
            if proc is None:
                return job
            self.stopping.add(job_id)
        stop_group(proc.pid, lambda t: _wait(proc, t), self.stop_grace)
        with self.cond:  # the worker records the state once the run has exited
            self.cond.wait_for(lambda: job_id not in self.procs, timeout=15)
        return job

    def _work(self, gpu: Optional[str]) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.queue or self.closed)
                if self.closed:
                    return
                job = self.jobs[self.queue.popleft()]
                job.state, job.gpu, job.attempts = RUNNING, gpu, job.attempts + 1
                job.output_offset = job.output_path.stat().st_size if job.output_path.exists() else 0
                try:
                    proc = self._launch(job, gpu)
                except OSError as e:
                    job.state, job.message = FAILED, f"could not start the run: {e}"
                    job.save()
                    continue
                job.pid = proc.pid
                job.save()
                self.procs[job.id] = proc
            code = proc.wait()
            with self.cond:
                del self.procs[job.id]
                stopped = job.id in self.stopping
                self.stopping.discard(job.id)
                job.exit_code, job.pid = code, None
                if code == 0:
                    job.state, job.message = FINISHED, ""
                elif self.closed:
                    job.state, job.message = UNFINISHED, "the app stopped; Resume continues where it stopped"
                elif stopped:
                    job.state, job.message = STOPPED, "stopped; Resume continues where it stopped"
                elif code in (130, 143, -signal.SIGINT, -signal.SIGTERM):  # run: Ctrl-C, SIGTERM
                    job.state, job.message = UNFINISHED, "interrupted; Resume continues where it stopped"
                else:
                    job.state, job.message = FAILED, ""
                job.save()
                self.cond.notify_all()

    def _launch(self, job: Job, gpu: Optional[str]) -> subprocess.Popen:
        env = {**(self.env if self.env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        with open(job.output_path, "ab") as out:
            where = f"GPU {gpu}" if gpu is not None else "the CPU"
            out.write(f"\n=== attempt {job.attempts} on {where}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            out.flush()
            job.output_offset = out.tell()
            # its own process group: Stop signals the run and the step command it started, nothing else
            return subprocess.Popen(self.argv_for(job), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=str(job.dir), env=env, start_new_session=True)

    def close(self) -> None:
        """Stop every running job cleanly (each stays resumable) and the workers."""
        with self.cond:
            self.closed = True
            running = list(self.procs)
            for job_id in list(self.queue):
                self.jobs[job_id].state = UNFINISHED
                self.jobs[job_id].message = "the app stopped before it started"
                self.jobs[job_id].save()
            self.queue.clear()
            self.cond.notify_all()
        for job_id in running:
            self.stop(job_id)
        for w in self.workers:
            w.join(timeout=5)


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _wait_pid(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


__all__ = ["Job", "JobInputs", "JobManager", "Progress", "read_progress", "safe_name", "DreamBooth3DError"]
