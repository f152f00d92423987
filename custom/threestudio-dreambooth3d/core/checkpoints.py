"""DreamBooth checkpoints on disk: safetensors weights + a small JSON, written atomically.

A checkpoint folder holds ``dreambooth.json`` (written last: its presence marks a
complete checkpoint), ``unet.safetensors`` and, when the text encoder was trained,
``text_encoder.safetensors``. In ``lora`` mode those hold only the LoRA weights; in
``full`` mode the whole module. Either applies on top of the base model it names.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from . import lora

META_FILE = "dreambooth.json"
FORMAT = "dreambooth3d-checkpoint/1"


def atomic_write_dir(target: Path, write_fn) -> Path:
    """Let ``write_fn(tmp_dir)`` fill a temporary folder, then swap it into place.

    A crash at any point leaves either the previous complete folder or the new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_fn(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def is_checkpoint(path: Union[str, Path]) -> bool:
    return (Path(path) / META_FILE).is_file()


def read_meta(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not is_checkpoint(path):
        raise FileNotFoundError(
            f"{path} is not a DreamBooth checkpoint (no {META_FILE}). Point at a folder written "
            "by `dreambooth3d finetune`, e.g. OUT/checkpoints/full."
        )
    return json.loads((path / META_FILE).read_text())


def save_checkpoint(
    path: Union[str, Path],
    unet: torch.nn.Module,
    text_encoder: Optional[torch.nn.Module],
    meta: Dict[str, Any],
) -> Path:
    """Write a checkpoint of the trainable weights. ``meta['mode']`` is 'lora' or 'full'."""
    mode = meta["mode"]

    def weights(module):
        if mode == "lora":
            return lora.lora_state_dict(module)
        return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(weights(unet), str(tmp / "unet.safetensors"))
        if text_encoder is not None:
            save_file(weights(text_encoder), str(tmp / "text_encoder.safetensors"))
        full_meta = {"format": FORMAT, **meta, "text_encoder_trained": text_encoder is not None}
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2))

    return atomic_write_dir(Path(path), write)


def load_into(module: torch.nn.Module, weights_file: Path, meta: Dict[str, Any], targets) -> None:
    """Load one module's checkpoint weights into ``module`` (adds LoRA layers if needed)."""
    state = load_file(str(weights_file))
    if meta["mode"] == "lora":
        from peft.tuners.tuners_utils import BaseTunerLayer

        if not any(isinstance(m, BaseTunerLayer) for m in module.modules()):
            lora.add_lora(module, meta["lora_rank"], meta["lora_alpha"], targets)
        lora.load_lora_state_dict(module, state)
    else:
        module.load_state_dict(state)


def apply_checkpoint(components, path: Union[str, Path], merge_lora: bool = True) -> Dict[str, Any]:
    """Apply a checkpoint to loaded SD components in place; returns its metadata."""
    path = Path(path)
    meta = read_meta(path)
    load_into(components.unet, path / "unet.safetensors", meta, lora.UNET_TARGETS)
    if meta.get("text_encoder_trained"):
        load_into(components.text_encoder, path / "text_encoder.safetensors", meta, lora.TEXT_ENCODER_TARGETS)
    if meta["mode"] == "lora" and merge_lora:
        lora.merge_lora(components.unet)
        if meta.get("text_encoder_trained"):
            lora.merge_lora(components.text_encoder)
    return meta
