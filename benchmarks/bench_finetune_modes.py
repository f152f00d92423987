"""Seconds per step and peak memory of every DreamBooth finetune mode, beside the counted estimate.

Modes: LoRA (rank 16, UNet), full UNet, full UNet + text encoder, each with and without
gradient checkpointing and with and without bitsandbytes' 8-bit AdamW, all with the trainer's
default precision (``--mixed-precision auto``: bf16 on a GPU that has it, fp16 on other GPUs,
fp32 on a CPU). The model is loaded once into host memory; each mode trains a deep copy
(``DreamBoothTrainer`` on the copied components, 1 instance + 1 class image per step as in
the default run, synthetic class images) for ``--warmup`` untimed then ``--steps`` timed
steps. Peak memory: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
(everything on the GPU: weights, gradients, optimizer state, activations); on a CPU the
process's peak RSS is not separable per mode and is not reported. "estimate" is
:func:`core.train_memory.training_bytes` (weights + gradients + optimizer, no activations).

    python benchmarks/bench_finetune_modes.py --model tiny --device cpu --steps 2
    python benchmarks/bench_finetune_modes.py --model sd21-random --device cuda --steps 5 --warmup 3
"""
from __future__ import annotations

import copy
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_dreambooth_step import write_class_images  # noqa: E402

GiB = 2**30


def modes() -> Dict[str, dict]:
    """Name -> DreamBoothConfig options, every mode x checkpointing x 8-bit AdamW."""
    out = {}
    for mode, te in (("lora", False), ("full", False), ("full", True)):
        for ckpt in (False, True):
            for eight in (False, True):
                name = ("full + text encoder" if te else mode) + (", checkpointing" if ckpt else ", no checkpointing") + (
                    ", 8-bit AdamW" if eight else ", AdamW")
                out[name] = {"mode": mode, "train_text_encoder": te, "gradient_checkpointing": ckpt,
                             "use_8bit_adam": eight}
    return out


def have_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or its CUDA set-up failing on import
        return False
    return True


def run_mode(components, options: dict, work: Path, device: torch.device, steps: int, warmup: int,
             class_dir: Path, subject: Path, model: str) -> Dict[str, object]:
    from threestudio_dreambooth3d.core.dreambooth import DreamBoothConfig, DreamBoothTrainer
    from threestudio_dreambooth3d.core.train_memory import training_bytes

    total = warmup + steps
    cfg = DreamBoothConfig(pretrained_model=model, subject_dir=str(subject), class_noun="dog",
                           output_dir=str(work), class_images_dir=str(class_dir), num_class_images=2,
                           max_steps=total, checkpoint_steps={"full": total}, device=str(device), **options)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = DreamBoothTrainer(cfg, components=copy.deepcopy(components))
    generator = torch.Generator().manual_seed(0)
    times: List[float] = []
    for i in range(total):
        common.synchronize(device)
        t0 = time.perf_counter()
        trainer.train_step(generator)
        common.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    params = {n: sum(p.numel() for p in getattr(components, n).parameters()) for n in ("unet", "text_encoder", "vae")}
    lora_params = {n: sum(p.numel() for k, p in getattr(trainer.components, n).named_parameters() if "lora_" in k)
                   for n in ("unet", "text_encoder")}
    est = training_bytes(params, cfg.mode, cfg.train_text_encoder, amp=trainer.amp_dtype is not None,
                         use_8bit_adam=cfg.use_8bit_adam, lora_params=lora_params)
    row = {"status": "ok", "s_per_step": statistics.median(times), "timed_steps": len(times),
           "estimate_gib": est.total / GiB, "autocast": str(trainer.amp_dtype or "off").replace("torch.", ""),
           "optimizer": type(trainer.optimizer).__name__}
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    del trainer
    gc.collect()
    return row


def main(argv=None) -> dict:
    p = common.make_parser(__doc__.split("\n")[0], steps=5, warmup=2, repeats=1)
    p.add_argument("--only", default=None, help="comma-separated mode names to run (default: all)")
    args = p.parse_args(argv)
    device = common.setup(args)
    model = common.resolve_model(args.model, args.models_dir)

    from threestudio_dreambooth3d.core.sd_models import load_sd_components
    from threestudio_dreambooth3d.tiny_models.sd import make_subject_images

    components = load_sd_components(model)  # host memory; each mode moves its own copy to the device
    size = max(64, components.resolution)
    results: Dict[str, Dict[str, object]] = {}
    wanted = [m.strip() for m in args.only.split(",")] if args.only else list(modes())
    bnb = have_bitsandbytes()
    with tempfile.TemporaryDirectory(prefix="bench-modes-") as tmp:
        work = Path(tmp)
        subject = make_subject_images(work / "subject", n=4, size=size)
        class_dir = write_class_images(work / "class_images", 2, size)
        for i, (name, options) in enumerate((n, o) for n, o in modes().items() if n in wanted):
            if options["use_8bit_adam"] and not bnb:
                results[name] = {"status": "not run: bitsandbytes not installed (pip install 'threestudio-dreambooth3d[8bit]')"}
                continue
            print(f"[bench] {name}", flush=True)
            try:
                results[name] = run_mode(components, options, work / f"run{i}", device, args.steps, args.warmup,
                                         class_dir, subject, model)
            except torch.cuda.OutOfMemoryError as e:
                results[name] = {"status": f"out of memory: {str(e).splitlines()[0]}"}
                gc.collect()
                torch.cuda.empty_cache()
    rows = [{"mode": n, "s/step": f"{r['s_per_step']:.4g}" if "s_per_step" in r else "",
             "peak GiB": f"{r['peak_gib']:.2f}" if "peak_gib" in r else "",
             "estimate GiB (no activations)": f"{r['estimate_gib']:.2f}" if "estimate_gib" in r else "",
             "status": r["status"]} for n, r in results.items()]
    common.print_table(f"DreamBooth finetune modes ({args.model}, {device.type})", rows)
    summary = {"model": args.model, "device": device.type, "steps": args.steps, "warmup": args.warmup,
               "machine": common.machine_description(device), "results": results}
    if args.json:
        import json

        args.json.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
