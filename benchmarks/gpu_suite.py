"""The GPU check in one command: every pipeline step for a few steps, every finetune mode, one table.

    THREESTUDIO_ROOT=/path/to/threestudio python benchmarks/gpu_suite.py            # on a CUDA machine
    THREESTUDIO_ROOT=/path/to/threestudio python benchmarks/gpu_suite.py --dry-run  # CPU, tiny model

On a GPU it answers what a user asks before a 2.5-hour run, within ``--budget`` (default 540 s,
9 minutes on one H100/H200): it runs ``dreambooth3d run``'s own steps (finetune, stage 1,
stage 2, multi-view finetune, stage 3, export) with the real configs (``16-mixed``, fp16
guidance weights, the finetune's default mixed precision) on Stable-Diffusion-2.1-base-shaped
random weights (built once, nothing is downloaded), shortened only in step counts and
turntables: each NeRF stage trains ``--nerf-steps`` and renders an 8-view test orbit, each
finetune ``--finetune-steps`` with ``--class-images`` class images; stage 2 (16 views at
512 px) runs at full size and the export with nvdiffrast's CUDA context, as a real run does.
Then every DreamBooth finetune mode (``bench_finetune_modes.py``: LoRA, full, full + text
encoder, each with and without gradient checkpointing and 8-bit AdamW) and the three
benchmark pairs (``bench_sds.py``, ``bench_translation.py`` at 4/8/16 views per call,
``bench_dreambooth_step.py``); ``--skip-benchmarks`` leaves the pairs out.

Every command runs in its own process under ``benchmarks/stage_timer.py`` (seconds per
training step, peak GPU memory) and is bounded by ``--timeout`` (at most 600 s); the
whole suite by ``--budget``. It prints and writes (``--out``: ``gpu_suite.md`` and
``gpu_suite.json``) ``dreambooth3d doctor``'s table, which CUDA pieces ran or were replaced by
the pure-torch stand-ins (from the steps' logs), and a table of s/step, peak memory and wall time
per step, and an estimate of the default pipeline's time: each step's set-up time plus its
default step count (the default preset's finetune steps and class images, the configs'
``trainer.max_steps``) times its median s/step over the steps after the first ``--warmup``;
stage 2 and the export as measured. On a GPU the tables also replace the GPU-suite section of
docs/BENCHMARKS.md (``--docs``; ``--no-docs`` to leave it). A step that crashes or runs out of
time fails the suite (exit 1) naming the step and its log; the steps after it are not run.

``--dry-run`` is the same on the CPU with the tiny random model, the smoke preset's step
counts and override set, and the benchmarks at their smallest: what CI runs. Without
threestudio only the threestudio-free rows run there; the others say why they did not.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

STAGE_TIMER = HERE / "stage_timer.py"
MAX_CALL_S = 600  # the longest any one command may run
PIPELINE_STEPS = ("finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export")
DEFAULT_BUDGET_S = 540  # 9 minutes: the GPU check fits a short device lease
GPU_TEST_VIEWS = 8  # test-orbit views of stages 1 and 3 (the configs render 120)
DOCS = REPO / "docs" / "BENCHMARKS.md"
DOCS_BEGIN, DOCS_END = "<!-- gpu-suite:begin -->", "<!-- gpu-suite:end -->"
# what the pure-torch stand-ins say when they replace a CUDA extension (cpu/compat.py, cpu/nerfacc.py)
STAND_IN_MARKS = {"tinycudann": "tinycudann is not importable", "nerfacc kernels": "nerfacc's CUDA extension could not"}
GiB = 2**30


class SubRunFailed(RuntimeError):
    pass


# the pipeline's steps come first and must all run; the measurements after them (finetune modes,
# benchmark pairs) start only with this much --budget left and are otherwise reported as not run
MIN_LEFT_S = 60
BUDGET_SPENT = f"not run: less than {MIN_LEFT_S} s of --budget left"


def budget_spent(deadline: float) -> bool:
    return deadline - time.monotonic() < MIN_LEFT_S


# -- running one bounded command ---------------------------------------------------------------
def run_bounded(argv: List[str], log: Path, timeout: float, cwd: Optional[Path] = None,
                env: Optional[Dict[str, str]] = None) -> float:
    """Run ``argv`` with its output in ``log``; its wall seconds. Raises SubRunFailed on a non-zero
    exit or after ``timeout`` seconds (the whole process group is killed)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if timeout <= 0:
        raise SubRunFailed(f"not started: the suite's --budget is spent (log would be {log})")
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SubRunFailed(f"timed out after {timeout:.0f} s (log: {log})") from None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    if code != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-8:]
        raise SubRunFailed(f"exit code {code} (log: {log})\n    " + "\n    ".join(tail))
    return time.perf_counter() - t0


# -- the pipeline's steps ----------------------------------------------------------------------
def nerf_default_steps(configs_dir: Path, step: str) -> int:
    import yaml

    return int(yaml.safe_load((configs_dir / f"dreambooth3d-{step}.yaml").read_text())["trainer"]["max_steps"])


def suite_context(args, out: Path, model: str, threestudio_root: Optional[Path]):
    """The pipeline's run context: the default preset shortened (GPU) or the smoke preset (dry run)."""
    from threestudio_dreambooth3d.pipeline.commands import locate_configs
    from threestudio_dreambooth3d.pipeline.context import RunContext
    from threestudio_dreambooth3d.pipeline.presets import PRESETS

    if args.dry_run:
        preset = PRESETS["smoke"]
    else:
        n = args.nerf_steps
        short = [f"trainer.max_steps={n}", f"trainer.val_check_interval={n}", "data.n_val_views=1",
                 f"data.n_test_views={GPU_TEST_VIEWS}"]
        base = PRESETS["default"]
        preset = dataclasses.replace(
            base, name="gpu-suite", finetune_steps=args.finetune_steps, partial_step=max(1, args.finetune_steps // 2),
            multiview_steps=args.finetune_steps, num_class_images=args.class_images,
            overrides={**base.overrides, "stage1": short, "stage3": short})
    return RunContext(out=out / "run", subject=Path(args.subject), class_noun=args.class_noun, prompt=args.prompt,
                      preset=preset, model=model, threestudio_root=threestudio_root, configs_dir=locate_configs(None))


def timing_row(name: str, timing: Dict, wall: float, warmup: int) -> Dict[str, object]:
    steps = list(timing.get("train_step_s") or [])
    timed = steps[warmup:] if len(steps) > warmup else steps
    row: Dict[str, object] = {"step": name, "status": "ok", "wall_s": wall,
                              "peak_gib": timing.get("peak_bytes", 0) / GiB, "memory": timing.get("memory", "")}
    if timed:
        row["s_per_step"] = statistics.median(timed)
        row["timed_steps"] = len(timed)
        row["setup_s"] = max(wall - sum(steps), 0.0)
    phases = timing.get("phases_s") or {}
    if "class_images" in phases and timing.get("class_images_generated"):
        row["s_per_class_image"] = phases["class_images"] / timing["class_images_generated"]
        row["setup_s"] = max(row.get("setup_s", wall) - phases["class_images"], 0.0)
    if "test" in phases:
        row["test_s"] = phases["test"]
    return row


def estimate(row: Dict[str, object], default_steps: Optional[int], default_class_images: int = 0) -> Optional[float]:
    """Seconds the step would take in the default run: set-up + default steps x s/step (+ class images)."""
    if row.get("status") != "ok":
        return None
    if default_steps is None or "s_per_step" not in row:
        return float(row["wall_s"])
    total = float(row["setup_s"]) + default_steps * float(row["s_per_step"])
    return total + default_class_images * float(row.get("s_per_class_image", 0.0))


def run_pipeline_steps(args, out: Path, model: str, threestudio_root: Optional[Path], deadline: float) -> List[Dict]:
    from threestudio_dreambooth3d.pipeline.commands import prepare_workspace
    from threestudio_dreambooth3d.pipeline.presets import PRESETS
    from threestudio_dreambooth3d.pipeline.runner import Runner
    from threestudio_dreambooth3d.pipeline.steps import STEPS

    rows: List[Dict] = []
    started: List[str] = []
    shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run: the runner would skip finished steps
    ctx = suite_context(args, out, model, threestudio_root)
    prepare_workspace(ctx)
    timings_dir = out / "timings"
    steps = [s for s in STEPS if s.name in PIPELINE_STEPS]
    if threestudio_root is None:  # what runs without threestudio: the first finetune
        runnable = [s for s in steps if not s.needs_threestudio and not s.upstream]
        skipped = [{"step": s.name, "status": "not run: threestudio not found (set THREESTUDIO_ROOT)"}
                   for s in steps if s not in runnable]
        steps = runnable
    else:
        skipped = []

    def executor(cmd, log_path: Path) -> None:
        started.append(cmd.log_name)
        timing = timings_dir / f"{cmd.log_name}.json"
        argv = [cmd.argv[0], str(STAGE_TIMER), "--json", str(timing), "--", *cmd.argv[1:]]
        print(f"[suite] {cmd.log_name}: running (log {log_path})", flush=True)
        wall = run_bounded(argv, log_path, min(args.timeout, deadline - time.monotonic()), cmd.cwd, cmd.env)
        rows.append(timing_row(cmd.log_name, json.loads(timing.read_text()), wall, args.warmup))
        print(f"[suite] {cmd.log_name}: {wall:.1f} s", flush=True)

    try:
        Runner(ctx, steps=steps, executor=executor).run()
    except Exception as e:  # the step's own error (crash, timeout, missing output)
        failed = started[-1] if started else steps[0].name
        rows = [r for r in rows if r["step"] != failed] + [{"step": failed, "status": f"FAILED: {e}"}]
    done = {r["step"] for r in rows}
    rows += [{"step": s.name, "status": "not run: an earlier step failed"} for s in steps if s.name not in done]
    rows += skipped

    default = PRESETS["default"]
    defaults = {"finetune": (default.finetune_steps, default.num_class_images),
                "multiview_finetune": (default.multiview_steps, 0),
                "stage1": (nerf_default_steps(ctx.configs_dir, "stage1"), 0),
                "stage3": (nerf_default_steps(ctx.configs_dir, "stage3"), 0)}
    for row in rows:
        steps_default, class_images = defaults.get(row["step"], (None, 0))
        row["default_steps"] = steps_default
        row["estimate_s"] = estimate(row, steps_default, class_images)
    return rows


# -- the benchmark pairs -----------------------------------------------------------------------
def bench_specs(args) -> Dict[str, List[str]]:
    if args.dry_run:
        small = ["--device", "cpu", "--steps", "1", "--warmup", "0", "--repeats", "1"]
        return {"bench_sds": ["--model", "tiny-512", *small],
                "bench_translation": ["--model", "tiny", "--views", "4", "--render-size", "64", "--batch-sizes", "2,4",
                                      "--inference-steps", "2", *small],
                "bench_dreambooth_step": ["--model", "tiny", *small]}
    return {"bench_sds": ["--model", "sd21-random", "--steps", "10", "--warmup", "3", "--repeats", "2"],
            "bench_translation": ["--model", "sd21-random", "--views", "16", "--batch-sizes", "4,8,16",
                                  "--steps", "1", "--warmup", "1", "--repeats", "1"],
            "bench_dreambooth_step": ["--model", "sd21-random", "--steps", "10", "--warmup", "3", "--repeats", "2"]}


def run_benchmarks(args, out: Path, threestudio_root: Optional[Path], deadline: float) -> List[Dict]:
    rows: List[Dict] = []
    for name, bench_args in bench_specs(args).items():
        if name == "bench_sds" and threestudio_root is None:
            rows.append({"step": name, "status": "not run: threestudio not found (set THREESTUDIO_ROOT)"})
            continue
        if budget_spent(deadline):
            rows.append({"step": name, "status": BUDGET_SPENT})
            continue
        result = out / "timings" / f"{name}.json"
        argv = [sys.executable, str(HERE / f"{name}.py"), *bench_args, "--models-dir", str(args.models_dir),
                "--json", str(result)]
        env = {"THREESTUDIO_ROOT": str(threestudio_root)} if threestudio_root else {}
        print(f"[suite] {name}: running", flush=True)
        try:
            wall = run_bounded(argv, out / "logs" / f"{name}.log", min(args.timeout, deadline - time.monotonic()),
                               env=env)
        except SubRunFailed as e:
            rows.append({"step": name, "status": f"FAILED: {e}"})
            continue
        summary = json.loads(result.read_text())
        for variant, m in summary["results"].items():
            rows.append({"step": f"{name}: {variant}", "status": "ok", "wall_s": wall, "s_per_step": m["seconds"],
                         "timed_steps": len(m["repeat_seconds"]) * summary["steps"],
                         "peak_gib": m["peak_bytes"] / GiB, "memory": summary["memory_method"]})
    return rows


# -- the table ---------------------------------------------------------------------------------
def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(rows: List[Dict], total_estimate: Optional[float], header: str, warmup: int = 0) -> str:
    cols = [("step", "step"), ("s_per_step", "s/step"), ("timed_steps", "timed steps"), ("peak_gib", "peak mem GiB"),
            ("estimate_gib", "counted GiB"), ("wall_s", "wall s"), ("default_steps", "default steps"),
            ("estimate_s", "default run s"), ("status", "status")]
    lines = [header, "", "| " + " | ".join(c for _, c in cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        cells = [_fmt(r.get(k)) for k, _ in cols]
        cells[-1] = cells[-1].splitlines()[0] if cells[-1] else ""  # the full error is in the JSON and on stderr
        lines.append("| " + " | ".join(cells) + " |")
    if total_estimate is not None:
        lines += ["", f"Estimated default pipeline (finetune -> export): {total_estimate / 3600:.2f} h "
                      f"({total_estimate:.0f} s) on this machine: for each step its set-up time (wall time minus "
                      f"its training steps) plus the default step count times its median s/step over the steps "
                      f"after the first {warmup} (warm-up); class images at their measured rate; stage 2 and the "
                      "export as measured (they run at full size); the full configs' validation renders and "
                      "120-view turntables are not in it."]
    return "\n".join(lines)


def environment_text(doctor: Dict[str, object], pieces: Dict[str, str]) -> str:
    """doctor's table and which CUDA pieces ran, as markdown."""
    lines = ["CUDA pieces in the pipeline steps (from their logs): "
             + "; ".join(f"{name}: {how}" for name, how in pieces.items()) + ".",
             "", f"`dreambooth3d doctor --preset {doctor['preset']}` on this machine:", "", "```",
             str(doctor["table"]).rstrip(), "```"]
    return "\n".join(lines)


def write_docs_section(path: Path, text: str) -> None:
    """Replace what lies between the GPU-suite markers of ``path`` with ``text``."""
    from threestudio_dreambooth3d.fs import atomic_write_text

    doc = path.read_text()
    if DOCS_BEGIN not in doc or DOCS_END not in doc:
        raise SystemExit(f"{path} has no {DOCS_BEGIN} ... {DOCS_END} section to write the tables into")
    head, rest = doc.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    atomic_write_text(path, f"{head}{DOCS_BEGIN}\n{text}\n{DOCS_END}{tail}")


# -- the machine -------------------------------------------------------------------------------
def run_doctor(args, out: Path) -> Dict[str, object]:
    """``dreambooth3d doctor``'s table for the preset the suite runs (it may report missing pieces)."""
    preset = "smoke" if args.dry_run else "default"
    argv = [sys.executable, "-m", "threestudio_dreambooth3d.cli", "doctor", "--preset", preset, "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return {"preset": preset, "exit": proc.returncode, "table": proc.stdout or proc.stderr}


def cuda_pieces(logs: Path, steps: List[str]) -> Dict[str, str]:
    """For tinycudann and nerfacc's kernels: the real one ran, or the pure-torch stand-in (its warning
    in a step's log), or no threestudio step ran to tell."""
    ran = [s for s in steps if s in PIPELINE_STEPS and s not in ("finetune", "multiview_finetune")]
    out = {}
    for piece, mark in STAND_IN_MARKS.items():
        hits = [s for s in ran if (logs / f"{s}.log").is_file() and mark in (logs / f"{s}.log").read_text(errors="replace")]
        out[piece] = (f"pure-torch stand-in (in {', '.join(hits)})" if hits
                      else "the real CUDA extension" if ran and torch.cuda.is_available()
                      else "pure-torch (CPU run)" if ran else "not known (no threestudio step ran)")
    return out


# -- the finetune modes ------------------------------------------------------------------------
def run_finetune_modes(args, out: Path, deadline: float) -> List[Dict]:
    """One row per DreamBooth mode x checkpointing x 8-bit AdamW (bench_finetune_modes.py, one process)."""
    result = out / "timings" / "finetune_modes.json"
    if args.dry_run:
        spec = ["--model", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0"]
    else:
        spec = ["--model", "sd21-random", "--device", "cuda", "--steps", "4", "--warmup", "2"]
    argv = [sys.executable, str(HERE / "bench_finetune_modes.py"), *spec, "--models-dir", str(args.models_dir),
            "--json", str(result)]
    if budget_spent(deadline):
        return [{"step": "finetune mode", "status": BUDGET_SPENT}]
    print("[suite] finetune modes: running", flush=True)
    try:
        wall = run_bounded(argv, out / "logs" / "finetune_modes.log", min(args.timeout, deadline - time.monotonic()))
    except SubRunFailed as e:
        return [{"step": "finetune mode", "status": f"FAILED: {e}"}]
    rows = []
    for mode, m in json.loads(result.read_text())["results"].items():
        row = {"step": f"finetune mode: {mode}", "status": m["status"], "wall_s": wall}
        if "s_per_step" in m:
            row.update(s_per_step=m["s_per_step"], timed_steps=m["timed_steps"], peak_gib=m.get("peak_gib"),
                       estimate_gib=m["estimate_gib"])
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, smoke step counts (what CI runs)")
    p.add_argument("--out", type=Path, default=Path("outputs") / "gpu_suite")
    p.add_argument("--models-dir", type=Path, default=common.default_models_dir())
    p.add_argument("--subject", default=str(REPO / "examples" / "red_toy"))
    p.add_argument("--class-noun", default="toy")
    p.add_argument("--prompt", default="a sks toy")
    p.add_argument("--nerf-steps", type=int, default=20, help="training steps of stages 1 and 3 (GPU)")
    p.add_argument("--finetune-steps", type=int, default=12, help="steps of each DreamBooth finetune (GPU)")
    p.add_argument("--class-images", type=int, default=2, help="class images to generate (GPU)")
    p.add_argument("--warmup", type=int, default=None, help="first steps left out of s/step (default 4; dry run 0)")
    p.add_argument("--timeout", type=float, default=MAX_CALL_S, help=f"seconds per command (at most {MAX_CALL_S})")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole suite")
    p.add_argument("--skip-benchmarks", action="store_true", help="leave out the three benchmark pairs")
    p.add_argument("--skip-modes", action="store_true", help="leave out the finetune modes")
    p.add_argument("--docs", type=Path, default=DOCS, help="GPU run: replace its GPU-suite section with the tables")
    p.add_argument("--no-docs", action="store_true", help="GPU run: leave --docs as it is")
    args = p.parse_args(argv)
    args.timeout = min(args.timeout, MAX_CALL_S)
    args.warmup = (0 if args.dry_run else 4) if args.warmup is None else args.warmup
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA GPU visible: run with --dry-run for the CPU path")
    from threestudio_dreambooth3d.environment.threestudio_root import find_threestudio_root

    threestudio_root = find_threestudio_root()
    if not args.dry_run and threestudio_root is None:
        p.error("threestudio not found: set THREESTUDIO_ROOT to a threestudio checkout (the folder with launch.py)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    device = torch.device("cpu" if args.dry_run else "cuda")

    if args.dry_run:
        from threestudio_dreambooth3d.tiny_models.sd import save_tiny_sd

        model = str(save_tiny_sd(out / "models" / "tiny-sd"))
    else:
        model = common.resolve_model("sd21-random", args.models_dir)
    doctor = run_doctor(args, out)
    rows = run_pipeline_steps(args, out, model, threestudio_root, deadline)
    pieces = cuda_pieces(out / "run" / "logs", [r["step"] for r in rows if r.get("status") == "ok"])
    if not args.skip_modes:
        rows += run_finetune_modes(args, out, deadline)
    if not args.skip_benchmarks:
        rows += run_benchmarks(args, out, threestudio_root, deadline)

    pipeline_rows = [r for r in rows if r["step"] in PIPELINE_STEPS]
    estimates = [r.get("estimate_s") for r in pipeline_rows]
    total = sum(estimates) if estimates and all(e is not None for e in estimates) else None
    kind = "dry run: CPU, tiny random model, smoke step counts" if args.dry_run else "GPU, SD-2.1-base-shaped random weights, fp16"
    header = f"### GPU suite ({kind})\n\n{common.machine_description(device)}"
    text = markdown(rows, total, header, args.warmup) + "\n\n" + environment_text(doctor, pieces)
    print("\n" + text, flush=True)
    (out / "gpu_suite.md").write_text(text + "\n")
    (out / "gpu_suite.json").write_text(json.dumps({"mode": kind, "machine": common.machine_description(device),
                                                    "rows": rows, "estimate_default_pipeline_s": total,
                                                    "doctor": doctor, "cuda_pieces": pieces}, indent=1))
    if not args.dry_run and not args.no_docs:
        write_docs_section(args.docs, text)
        print(f"[suite] tables written into {args.docs}", flush=True)
    failed = [r for r in rows if str(r.get("status", "")).startswith("FAILED")]
    for r in failed:
        print(f"gpu_suite: {r['step']} {r['status']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
