"""Tiny random CLIP and DINO models saved in hub layout, built offline for tests.

They load back through ``ClipEncoder.load`` / ``DinoEncoder.load`` by path, the same
code a user hits with ``openai/clip-vit-base-patch16`` or ``facebook/dino-vits16``.
Their numbers mean nothing; they exercise the mechanics.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Tuple, Union

import torch

from .sd import write_tiny_clip_tokenizer

IMAGE_SIZE = 32
PATCH_SIZE = 8
HIDDEN = 32
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _vision_kwargs() -> dict:
    return dict(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=HIDDEN, intermediate_size=37,
                num_attention_heads=4, num_hidden_layers=2)


def build_tiny_clip(seed: int = 0):
    """(CLIPModel, CLIPTokenizer, CLIPImageProcessor), deterministic for a seed."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(tmp), model_max_length=77)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=_vision_kwargs(),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return model, tokenizer, processor


def save_tiny_clip(folder: Union[str, Path], seed: int = 0, model=None) -> Path:
    """Save a tiny CLIP folder (model, tokenizer, image processor); ``model`` overrides
    the random one, e.g. one whose projections a test has set by hand."""
    built, tokenizer, processor = build_tiny_clip(seed)
    folder = Path(folder)
    (model or built).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_dino(folder: Union[str, Path], seed: int = 0) -> Path:
    """Save a tiny DINO-style ViT (no pooler, as facebook/dino-vits16) with its processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    model = ViTModel(ViTConfig(**_vision_kwargs()), add_pooling_layer=False).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=IMAGENET_MEAN,
                      image_std=IMAGENET_STD, resample=2).save_pretrained(folder)
    return folder


TINY_EVAL_VERSION = 1  # bump when the tiny models change: a cached copy of another build is not reused


def tiny_eval_models(folder: Union[str, Path, None] = None) -> Tuple[Path, Path]:
    """(tiny CLIP folder, tiny DINO folder) for ``dreambooth3d eval --tiny``: built once, offline,
    under ``folder`` (default: the cache folder) and reused; their numbers check the set-up only."""
    from ..defaults import cache_dir
    from ..fs import atomic_write_dir

    root = Path(folder) if folder is not None else cache_dir() / f"tiny-eval-models-v{TINY_EVAL_VERSION}"
    clip, dino = root / "tiny-random-clip", root / "tiny-random-dino"
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" is not the command's progress
    try:
        if not (clip / "config.json").is_file():
            atomic_write_dir(clip, save_tiny_clip)
        if not (dino / "config.json").is_file():
            atomic_write_dir(dino, save_tiny_dino)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return clip, dino
