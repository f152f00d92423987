"""What the benchmark scripts share: the model to run, the device, timing, peak memory, the table.

Each script compares our implementation with a reference in one process, on the same
model weights, interleaving the two (``repeats`` blocks of ``steps`` timed steps each,
after ``warmup`` untimed ones) so that load from other processes hits both alike.

Models (``--model``):

* ``tiny``: the 32 px random test model of ``threestudio_dreambooth3d.tiny_models.sd``;
* ``tiny-512``: the same tiny widths with Stable Diffusion's geometry (VAE downsampling
  8x, 64x64 latents, 512 px images), for code that hard-codes SD's 512 px (threestudio's
  stock guidance does);
* ``sd21-random``: Stable Diffusion 2.1-base shapes with random weights (real time and
  memory, nothing downloaded, ~5 GB on disk);
* any diffusers model folder or hub id.

Built models are cached under ``--models-dir`` (default ``$BENCH_MODELS_DIR`` or
``~/.cache/threestudio-dreambooth3d/bench-models``) by name only: delete a folder there
to rebuild it after ``testing.py`` changes.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each variant's
steps); on CPU the growth of the process's peak resident set size over the steps (Linux
``VmHWM`` reset through ``/proc/self/clear_refs`` after ``gc`` and ``malloc_trim``; a
psutil sampling thread elsewhere). Both are reported as the peak *above* what was
resident when the variant's steps began, so weights shared by the two variants cancel.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_CHOICES = ("tiny", "tiny-512", "sd21-random")
MiB = 2**20


# -- command line ------------------------------------------------------------------------------
def default_models_dir() -> Path:
    return Path(os.environ.get("BENCH_MODELS_DIR", Path.home() / ".cache" / "threestudio-dreambooth3d" / "bench-models"))


def make_parser(description: str, steps: int, warmup: int = 1, repeats: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help=f"one of {', '.join(MODEL_CHOICES)}, or a diffusers model folder / hub id")
    p.add_argument("--models-dir", type=Path, default=default_models_dir(), help="where built models are cached")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=steps, help="timed steps per variant in each repeat")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps per variant before timing")
    p.add_argument("--repeats", type=int, default=repeats, help="interleaved timing blocks; the median is reported")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but torch sees no GPU. Run with --device cpu.")
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            sys.exit(f"--{name} must be at least 1")
    return device


# -- models ------------------------------------------------------------------------------------
def resolve_model(model: str, models_dir: Path) -> str:
    """A loadable model folder (or hub id) for ``--model``, building random models once."""
    from threestudio_dreambooth3d.tiny_models import sd as testing

    models_dir = Path(models_dir)
    if model == "tiny":
        return str(testing.save_tiny_sd(models_dir / "tiny-sd"))
    if model == "tiny-512":
        return str(save_tiny_sd_512(models_dir / "tiny-sd-512"))
    if model == "sd21-random":
        print(f"[bench] SD-2.1-base-shaped random model in {models_dir / 'sd21-base-random'} (built once, ~5 GB)", flush=True)
        return str(testing.save_sd21_base_random(models_dir / "sd21-base-random"))
    path = Path(model)
    if path.exists() and not (path / "model_index.json").exists():
        sys.exit(f"--model {model}: not a diffusers model folder (no model_index.json). "
                 f"Use one of {', '.join(MODEL_CHOICES)} or a folder saved with save_pretrained.")
    return model


def save_tiny_sd_512(folder: Path, seed: int = 0) -> Path:
    """The tiny test model with SD's geometry: 64x64 latents, a VAE that downsamples 8x (512 px)."""
    from diffusers import AutoencoderKL

    from threestudio_dreambooth3d.tiny_models.sd import calibrate_vae, save_tiny_sd

    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".building")
    save_tiny_sd(tmp, seed=seed, sample_size=64)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512,
    )
    calibrate_vae(vae, seed)  # as the test kit's tiny VAE
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    tmp.rename(folder)
    return folder


# -- timing and memory -------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _malloc_trim() -> None:
    # Hand freed heap pages back to the OS so the next variant's growth shows up in RSS.
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes(field_name: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field_name}:\s+(\d+) kB", status).group(1)) * 1024


class PeakMemory:
    """Peak memory above the level at :meth:`reset`, for CUDA or the CPU process."""

    def __init__(self, device: torch.device):
        self.device = device
        self._sampler: Optional[threading.Thread] = None
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated (peak above allocated at start)"
        elif self._can_reset_hwm():
            self.method = "peak RSS above RSS at start (Linux VmHWM, reset via /proc/self/clear_refs)"
        else:
            self.method = "peak RSS above RSS at start (psutil sampled every 1 ms)"
        self.start = 0
        self.absolute_peak = 0

    @staticmethod
    def _can_reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            _rss_bytes("VmHWM")
            return True
        except (OSError, AttributeError):
            return False

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        elif self.method.startswith("peak RSS above RSS at start (Linux"):
            _malloc_trim()
            Path("/proc/self/clear_refs").write_text("5")
            self.start = _rss_bytes("VmRSS")
        else:
            _malloc_trim()
            self._start_sampler()

    def _start_sampler(self) -> None:
        import psutil

        proc = psutil.Process()
        self.start = proc.memory_info().rss
        self._peak_rss, self._stop = self.start, threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak_rss = max(self._peak_rss, proc.memory_info().rss)
                time.sleep(0.001)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def peak_above_start(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.absolute_peak = torch.cuda.max_memory_allocated(self.device)
        elif self._sampler is None:
            self.absolute_peak = _rss_bytes("VmHWM")
        else:
            self._stop.set()
            self._sampler.join()
            self._sampler = None
            self.absolute_peak = self._peak_rss
        return max(self.absolute_peak - self.start, 0)


@dataclass
class Measurement:
    name: str
    repeat_seconds: List[float] = field(default_factory=list)  # mean wall s/step of each repeat
    repeat_cpu_seconds: List[float] = field(default_factory=list)  # mean process CPU s/step (all threads)
    peak_bytes: int = 0  # largest peak above start over the repeats
    absolute_peak_bytes: int = 0

    @property
    def seconds(self) -> float:
        return statistics.median(self.repeat_seconds)

    @property
    def spread(self) -> str:
        lo, hi = min(self.repeat_seconds), max(self.repeat_seconds)
        return f"{lo:.4g}-{hi:.4g}"

    @property
    def cpu_seconds(self) -> float:
        return statistics.median(self.repeat_cpu_seconds)


def compare(variants: Dict[str, Callable[[], object]], device: torch.device, steps: int, warmup: int,
            repeats: int, memory: Optional[PeakMemory] = None) -> Dict[str, Measurement]:
    """Time each variant's ``step()``: ``warmup`` untimed calls each, then ``repeats``
    blocks in which every variant runs ``steps`` timed calls in turn (A..A B..B A..A ...).
    """
    memory = memory or PeakMemory(device)
    results = {name: Measurement(name) for name in variants}
    for name, step in variants.items():
        for _ in range(warmup):
            step()
        synchronize(device)
    for r in range(repeats):
        for name, step in variants.items():
            memory.reset()
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                step()
            synchronize(device)
            elapsed = (time.perf_counter() - t0) / steps
            m = results[name]
            m.repeat_seconds.append(elapsed)
            m.repeat_cpu_seconds.append((time.process_time() - c0) / steps)
            m.peak_bytes = max(m.peak_bytes, memory.peak_above_start())
            m.absolute_peak_bytes = max(m.absolute_peak_bytes, memory.absolute_peak)
            print(f"[bench] repeat {r + 1}/{repeats} {name}: {elapsed:.4g} s/step", flush=True)
    return results


# -- reporting ---------------------------------------------------------------------------------
def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        pass
    desc = f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        desc = f"GPU {torch.cuda.get_device_name(device)}; " + desc
    return desc


def print_table(title: str, rows: Sequence[Dict[str, object]]) -> str:
    """Print rows (dicts with the same keys) as an aligned text table; returns the text."""
    cols = list(rows[0])
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [title, line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(out)
    print("\n" + text, flush=True)
    return text


def comparison_rows(results: Dict[str, Measurement], reference: str, device: torch.device) -> List[Dict[str, object]]:
    """One row per variant: median wall s/step, repeat range, peak memory, time relative to the reference.

    On a CPU the process CPU time per step is shown too: other processes' load
    stretches wall time but hardly CPU time, so it is the steadier figure on a shared machine.
    """
    rows = []
    ref = results[reference]
    for name, m in results.items():
        row = {"variant": name, "s/step (median)": f"{m.seconds:.4g}", "range over repeats": m.spread}
        if device.type == "cpu":
            row["CPU s/step"] = f"{m.cpu_seconds:.4g}"
        row["peak mem MiB"] = f"{m.peak_bytes / MiB:.1f}"
        row["time / reference"] = f"{m.seconds / ref.seconds:.3f}"
        if device.type == "cpu":
            row["CPU time / reference"] = f"{m.cpu_seconds / ref.cpu_seconds:.3f}"
        rows.append(row)
    return rows


def report(title: str, args: argparse.Namespace, device: torch.device, results: Dict[str, Measurement],
           ours: str, reference: str, memory: PeakMemory, extra: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """Print the comparison table with the run's setup; write ``--json`` if asked."""
    o, r = results[ours], results[reference]
    summary = {
        "benchmark": title,
        "machine": machine_description(device),
        "model": args.model,
        "device": str(device),
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "memory_method": memory.method,
        "ratio_ours_over_reference": o.seconds / r.seconds,
        "speedup_reference_over_ours": r.seconds / o.seconds,
        "cpu_time_ratio_ours_over_reference": o.cpu_seconds / r.cpu_seconds,
        **(extra or {}),
        "results": {k: {**asdict(v), "seconds": v.seconds} for k, v in results.items()},
    }
    print_table(f"{title}  [model {args.model}, {device}]", comparison_rows(results, reference, device))
    print(f"ours/reference wall time: {summary['ratio_ours_over_reference']:.3f}  "
          f"(ours is {summary['speedup_reference_over_ours']:.2f}x as fast)"
          + (f"; CPU time: {summary['cpu_time_ratio_ours_over_reference']:.3f}" if device.type == "cpu" else ""))
    print(f"memory: {memory.method}")
    print(f"machine: {summary['machine']}")
    for k, v in (extra or {}).items():
        print(f"{k}: {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return summary
