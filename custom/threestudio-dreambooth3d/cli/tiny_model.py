"""``dreambooth3d tiny-model OUT``: a tiny random Stable Diffusion folder, built offline in seconds.

The base model of the CPU smoke run and of launch.py commands tried on a CPU
(docs/THREESTUDIO.md): it checks a set-up, its pictures are noise.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "tiny-model",
        help="write a tiny random Stable Diffusion (diffusers folder) to try the pipeline or launch.py on a CPU",
        description="Build a tiny random Stable Diffusion offline (seconds, a few MB) and save it as a diffusers "
        "folder: a base model for `dreambooth3d finetune --model OUT` and "
        "system.guidance.pretrained_model_name_or_path=OUT. It checks a set-up; its pictures are noise.",
    )
    p.add_argument("out", help="folder to write (model_index.json, unet/, vae/, text_encoder/, ...)")
    p.add_argument("--seed", type=int, default=0, help="random weights' seed (default %(default)s)")
    return p


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ..tiny_models.sd import save_tiny_sd

    hf_logging.disable_progress_bar()  # "Writing model shards" is not this command's progress
    path = save_tiny_sd(Path(args.out), seed=args.seed)
    print(f"wrote a tiny random Stable Diffusion to {path}")
    return 0
