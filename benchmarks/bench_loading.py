"""Host RAM and seconds to load what the prompt processor and the SDS guidance use: whole model vs parts.

Before part-wise loading, the prompt processor loaded the whole model (UNet and VAE too) and
merged the checkpoint's LoRA into all of it only to embed prompts, and the guidance loaded a
text encoder only to free it. Now each loads its parts (``sd_models.TEXT_PARTS`` /
``DENOISING_PARTS``) with only their checkpoint weights. Each variant runs in a fresh
process (so one cannot inherit another's heap) ``--repeats`` times on the CPU, with a DreamBooth
checkpoint that has rank-16 LoRA on both the UNet and the text encoder (built once next to
the model, ``--models-dir``):

* seconds: ``load_sd_components`` (+ embedding 4 prompts for the prompt processor);
* peak RSS: the process's ``VmHWM`` minus its RSS after the imports, i.e. what loading added at
  its peak; resident after: RSS once loading is done (the freed text encoder gone). diffusers
  keeps safetensors weights memory-mapped, so RSS counts the UNet and VAE only as far as they
  were read: "weights loaded" is the bytes of every tensor loaded (before the guidance freed its
  text encoder), what they take in RAM once used (or VRAM once moved to the GPU).

    python benchmarks/bench_loading.py --model tiny --repeats 5
    python benchmarks/bench_loading.py --model sd21-random --repeats 2
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

PROMPTS = ["a sks dog", "a sks dog, side view", "a sks dog, back view", ""]
VARIANTS = {
    "prompt processor, before: whole model + checkpoint": ("prompt", "all"),
    "prompt processor, now: tokenizer + text encoder": ("prompt", "parts"),
    "guidance, before: whole model, text encoder freed": ("guidance", "all"),
    "guidance, now: UNet + VAE + scheduler": ("guidance", "parts"),
}


def lora_checkpoint(model: str, folder: Path) -> Path:
    """A checkpoint with non-zero rank-16 LoRA on the UNet and the text encoder (train_text_encoder's case)."""
    from threestudio_dreambooth3d.core import checkpoints
    from threestudio_dreambooth3d.tiny_models.sd import save_random_lora_checkpoint

    if checkpoints.is_checkpoint(folder):
        return folder
    return save_random_lora_checkpoint(model, folder, rank=16, std=1e-3)


def child(user: str, how: str, model: str, checkpoint: str) -> dict:
    """One load in this (fresh) process: seconds, peak RSS added, RSS resident after."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: F401
    from peft import LoraConfig, inject_adapter_in_model  # noqa: F401
    from peft.tuners.lora import LoraLayer  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    from threestudio_dreambooth3d.core import checkpoints, mvdream  # noqa: F401
    from threestudio_dreambooth3d.core.sd_models import DENOISING_PARTS, PARTS, TEXT_PARTS, load_sd_components

    # the libraries are imported above: only loading is measured
    gc.collect()
    common._malloc_trim()
    start_rss = common._rss_bytes("VmRSS")
    t0 = time.perf_counter()
    if user == "prompt":
        comps = load_sd_components(model, checkpoint=checkpoint, parts=PARTS if how == "all" else TEXT_PARTS)
        held = weight_bytes(comps)
        with torch.no_grad():
            comps.encode_prompts(PROMPTS, "cpu")
    else:
        comps = load_sd_components(model, checkpoint=checkpoint, parts=PARTS if how == "all" else DENOISING_PARTS)
        held = weight_bytes(comps)
        comps.text_encoder = comps.tokenizer = None  # what the guidance did before
        gc.collect()
    seconds = time.perf_counter() - t0
    common._malloc_trim()
    return {"seconds": seconds, "peak_added": common._rss_bytes("VmHWM") - start_rss,
            "resident_after": common._rss_bytes("VmRSS") - start_rss, "weights_held": held}


def weight_bytes(comps) -> int:
    """Bytes of every loaded tensor: the host RAM the weights take once touched (diffusers keeps
    safetensors weights memory-mapped, so RSS counts only the pages read so far)."""
    return sum(t.numel() * t.element_size() for m in comps.modules() for t in [*m.parameters(), *m.buffers()])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny", help=f"one of {', '.join(common.MODEL_CHOICES)} or a model folder")
    p.add_argument("--models-dir", type=Path, default=common.default_models_dir())
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per variant")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--child", nargs=4, metavar=("USER", "HOW", "MODEL", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(*args.child)))
        return {}
    model = common.resolve_model(args.model, args.models_dir)
    ckpt = lora_checkpoint(model, args.models_dir / f"{Path(model).name}-lora16-checkpoint")
    results = {}
    for name, (user, how) in VARIANTS.items():
        runs = []
        for r in range(args.repeats):
            argv_child = [sys.executable, __file__, "--child", user, how, model, str(ckpt)]
            if args.threads:
                argv_child += ["--threads", str(args.threads)]
            out = subprocess.run(argv_child, capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"[bench] {name} run {r + 1}/{args.repeats}: {runs[-1]['seconds']:.3g} s", flush=True)
        results[name] = {"seconds": statistics.median(x["seconds"] for x in runs),
                         "seconds_range": [min(x["seconds"] for x in runs), max(x["seconds"] for x in runs)],
                         "peak_added_bytes": statistics.median(x["peak_added"] for x in runs),
                         "resident_after_bytes": statistics.median(x["resident_after"] for x in runs),
                         "weights_held_bytes": runs[0]["weights_held"]}
    rows = [{"variant": n, "load s (median)": f"{m['seconds']:.3g}",
             "range": f"{m['seconds_range'][0]:.3g}-{m['seconds_range'][1]:.3g}",
             "peak RSS added MiB": f"{m['peak_added_bytes'] / common.MiB:.0f}",
             "resident after MiB": f"{m['resident_after_bytes'] / common.MiB:.0f}",
             "weights loaded MiB": f"{m['weights_held_bytes'] / common.MiB:.0f}"} for n, m in results.items()]
    common.print_table(f"Loading {args.model} + a LoRA checkpoint (UNet + text encoder), CPU, fp32", rows)
    print("machine: " + common.machine_description(torch.device("cpu")))
    summary = {"model": args.model, "repeats": args.repeats, "results": results,
               "machine": common.machine_description(torch.device("cpu"))}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
