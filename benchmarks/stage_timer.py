"""Run one pipeline command and record how long its steps take and its peak GPU memory.

    python benchmarks/stage_timer.py --json OUT.json [--warmup N] -- -m MODULE ARGS...
    python benchmarks/stage_timer.py --json OUT.json [--warmup N] -- SCRIPT.py ARGS...

The command after ``--`` is what the pipeline would run after its interpreter (e.g.
``-m threestudio_dreambooth3d.cpu.compat launch.py --config ... --train``, or ``-m
threestudio_dreambooth3d.cli finetune ...``); it runs in this process, unchanged, with
timing hooks: a Lightning callback added to every ``Trainer`` (training steps, the test
epoch and its batches) and a wrapper around ``DreamBoothTrainer.train_step`` and the
class-image generation. Each timed interval ends with a CUDA synchronise. The JSON holds
the per-step seconds, the seconds of the run's phases, the device and the peak memory
(``torch.cuda.max_memory_allocated``; the process's peak RSS on a CPU); it is written
when the command ends, also when it fails.
"""
from __future__ import annotations

import argparse
import atexit
import json
import resource
import runpy
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

RECORD: Dict[str, object] = {"train_step_s": [], "test_batch_s": [], "phases_s": {}, "exit": None}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _now() -> float:
    _sync()
    return time.perf_counter()


def _add_phase(name: str, seconds: float) -> None:
    phases = RECORD["phases_s"]
    phases[name] = phases.get(name, 0.0) + seconds  # type: ignore[union-attr]


def install_lightning_timer() -> None:
    """Every ``pytorch_lightning.Trainer`` built from now on gets the timing callback (if Lightning is installed)."""
    try:
        import pytorch_lightning as pl
    except ImportError:  # a finetune-only environment
        return

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.t0 = _now()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            RECORD["train_step_s"].append(_now() - self.t0)  # type: ignore[union-attr]

        def on_test_start(self, trainer, module):
            self.test_t0 = _now()

        def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            self.tb = _now()

        def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            RECORD["test_batch_s"].append(_now() - self.tb)  # type: ignore[union-attr]

        def on_test_end(self, trainer, module):
            # the test batches render; stage 2 translates them all at the epoch's end
            _add_phase("test", _now() - self.test_t0)

    base = pl.Trainer

    class TimedTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, callbacks=None, **kwargs):
            callbacks = list(callbacks or []) + [StepTimer()]
            super().__init__(*args, callbacks=callbacks, **kwargs)

    TimedTrainer.__name__ = TimedTrainer.__qualname__ = "Trainer"
    pl.Trainer = TimedTrainer


def install_finetune_timer() -> None:
    """Time ``DreamBoothTrainer.train_step`` and the class-image generation."""
    from threestudio_dreambooth3d.core import dreambooth

    step = dreambooth.DreamBoothTrainer.train_step

    def timed_step(self, *args, **kwargs):
        t0 = _now()
        out = step(self, *args, **kwargs)
        RECORD["train_step_s"].append(_now() - t0)  # type: ignore[union-attr]
        return out

    dreambooth.DreamBoothTrainer.train_step = timed_step
    ensure = dreambooth.ensure_class_images

    def timed_ensure(cfg, components):
        before = len(list(cfg.class_dir.glob("class_*.png"))) if cfg.class_dir.is_dir() else 0
        t0 = _now()
        out = ensure(cfg, components)
        _add_phase("class_images", _now() - t0)
        RECORD["class_images_generated"] = max(len(out) - before, 0)
        return out

    dreambooth.ensure_class_images = timed_ensure


def _peak_memory() -> Dict[str, object]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"device": torch.cuda.get_device_name(), "peak_bytes": torch.cuda.max_memory_allocated(),
                "memory": "torch.cuda.max_memory_allocated"}
    # ru_maxrss is in KiB on Linux
    return {"device": "cpu", "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "memory": "peak RSS of the process"}


def main(argv: List[str] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    parser = argparse.ArgumentParser(description="time one pipeline command")
    parser.add_argument("--json", type=Path, required=True)
    opts = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise SystemExit("nothing to run after --")
    t_start = time.perf_counter()

    def write() -> None:
        RECORD.update(_peak_memory())
        RECORD["wall_s"] = time.perf_counter() - t_start
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(RECORD, indent=1))

    atexit.register(write)
    install_lightning_timer()
    install_finetune_timer()
    try:
        if command[0] == "-m":
            sys.argv = [command[1]] + command[2:]
            runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = command
            runpy.run_path(command[0], run_name="__main__")
        RECORD["exit"] = 0
    except SystemExit as e:
        RECORD["exit"] = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    except BaseException:
        RECORD["exit"] = 1
        raise


if __name__ == "__main__":
    main()
