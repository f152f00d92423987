"""What a DreamBooth finetune costs in device memory and disk, counted from parameter numbers.

Torch-free (``dreambooth3d doctor`` sizes its disk check with it before anything loads). Counts:
trained parameters in fp32 (4 bytes) with fp32 gradients (4 B) and AdamW's two fp32 moments (8 B;
bitsandbytes' 8-bit AdamW: 2 B), frozen weights in the autocast dtype (2 B) or fp32 (4 B), as
:mod:`.train_options` sets them. Activations are not counted: they depend on the batch, the
resolution and gradient checkpointing, and the GPU suite measures them.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

# parameters of Stable Diffusion 2.1 base (stabilityai/stable-diffusion-2-1-base), counted on
# tiny_models.sd.sd21_base_modules: used when a hub model is not on disk yet
SD21_BASE_PARAMS = {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}
# LoRA rank 16 on the attention projections (to_q/k/v/out.0, q/k/v/out_proj)
SD21_BASE_LORA16_PARAMS = {"unet": 3_319_808, "text_encoder": 3_014_656}


@dataclass(frozen=True)
class TrainingBytes:
    """Bytes a finetune holds for weights, gradients and optimizer state (activations come on top)."""

    trained_params: int
    weights: int
    grads: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def state_file(self) -> int:
        """The resumable state on disk: trained parameters + optimizer state."""
        return self.trained_params * 4 + self.optimizer


def training_bytes(params: Dict[str, int], mode: str, train_text_encoder: bool, amp: bool,
                   use_8bit_adam: bool, lora_params: Optional[Dict[str, int]] = None) -> TrainingBytes:
    """Count what a DreamBooth finetune of components with ``params`` (name -> parameter count:
    unet, text_encoder, vae) keeps on the device: trained parameters fp32 (4 B) with fp32
    gradients (4 B) and AdamW moments (8 B; 2 B in 8 bit); frozen weights in the autocast
    dtype (2 B) or fp32. LoRA mode trains ``lora_params`` (its adapters) beside frozen bases."""
    lora_params = lora_params or {}
    trained_modules = ["unet"] + (["text_encoder"] if train_text_encoder else [])
    if mode == "lora":
        trained = sum(lora_params.get(m, 0) for m in trained_modules)
        frozen = sum(params.values())
    else:
        trained = sum(params[m] for m in trained_modules)
        frozen = sum(n for m, n in params.items() if m not in trained_modules)
    frozen_bytes = 2 if amp else 4
    return TrainingBytes(trained_params=trained, weights=trained * 4 + frozen * frozen_bytes, grads=trained * 4,
                         optimizer=trained * (2 if use_8bit_adam else 8))


def finetune_disk_bytes(params: Dict[str, int], mode: str, train_text_encoder: bool, use_8bit_adam: bool,
                        checkpoints: int = 3, lora_params: Optional[Dict[str, int]] = None) -> int:
    """Disk one DreamBooth3D run's finetunes need at their peak: the photo run's and the multi-view
    run's state files (each kept for resuming), one of them twice while it is replaced (written
    next to the old one, then renamed), and ``checkpoints`` named checkpoints (partial, full,
    multiview: the trained modules' fp32 weights, or LoRA adapters)."""
    tb = training_bytes(params, mode, train_text_encoder, amp=True, use_8bit_adam=use_8bit_adam,
                        lora_params=lora_params)
    return 3 * tb.state_file + checkpoints * tb.trained_params * 4


def safetensors_params(path: Union[str, Path]) -> int:
    """Number of parameters stored in a ``.safetensors`` file, from its header only (no tensor is read)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for d in entry["shape"]:
            n *= d
        total += n
    return total


def folder_params(folder: Union[str, Path]) -> Optional[Dict[str, int]]:
    """Parameters per component of a diffusers model folder (unet, text_encoder, vae), or None
    when a component has no safetensors weights there (e.g. .bin only)."""
    counts = {}
    for name in SD21_BASE_PARAMS:
        files = sorted((Path(folder) / name).glob("*.safetensors"))
        if not files:
            return None
        # a folder with fp16 variants holds both: count one set
        plain = [f for f in files if ".fp16." not in f.name] or files
        counts[name] = sum(safetensors_params(f) for f in plain)
    return counts
