"""How DreamBooth trains on a device: precision, optimizer, gradient checkpointing, state saves
(what they cost in memory and disk: :mod:`.train_memory`).

The settings follow diffusers' ``train_dreambooth(_lora).py`` examples, so a 24 GB card fits
every mode: autocast in bf16 where the GPU has it (else fp16 with loss scaling) while the
trained parameters, their gradients and the optimizer state stay fp32 and the frozen modules
are stored in the autocast dtype; TF32 matmuls; gradient checkpointing (on by default for a
full finetune, whose activations dominate); optionally bitsandbytes' 8-bit AdamW. The
resumable training state is written every ``save_state_minutes`` and at the end, into one
file that is replaced each time.

Each piece is a small pure function so the trainer only calls them and tests check them
without a GPU.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager, Dict, Iterable, List, Optional

import torch

from ..errors import ConfigError, MissingDependencyError

AMP_DTYPES: Dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}

# --- precision -------------------------------------------------------------------------------


def select_amp_dtype(mixed_precision: str, device_type: str, bf16_supported: bool) -> Optional[torch.dtype]:
    """The autocast dtype for ``--mixed-precision`` on ``device_type``; None means fp32.

    ``auto`` (the default): bf16 on a CUDA GPU that supports it, else fp16 on CUDA, fp32 on a
    CPU. ``bf16`` also runs on a CPU (torch's CPU autocast); ``fp16`` needs CUDA (its loss
    scaler is CUDA-only)."""
    if mixed_precision == "no":
        return None
    if mixed_precision == "auto":
        if device_type != "cuda":
            return None
        return torch.bfloat16 if bf16_supported else torch.float16
    if mixed_precision not in AMP_DTYPES:
        raise ConfigError(f"--mixed-precision must be auto, no, fp16 or bf16, not {mixed_precision!r}")
    if mixed_precision == "fp16" and device_type != "cuda":
        raise ConfigError("--mixed-precision fp16 needs a CUDA GPU (its loss scaling is CUDA-only): "
                          "use bf16 or no on this device")
    return AMP_DTYPES[mixed_precision]


def device_supports_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """torch.autocast in ``dtype`` on ``device``, or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def enable_tf32(device: torch.device) -> bool:
    """TF32 matmuls and convolutions on an Ampere+ GPU (fp32 accuracy is not needed for training)."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


# --- memory savers ---------------------------------------------------------------------------


def wants_gradient_checkpointing(flag: Optional[bool], mode: str) -> bool:
    """``--(no-)gradient-checkpointing`` as given, else on for a full finetune (its activations
    and gradients are what overflow 24 GB), off for LoRA (where it only costs time)."""
    return flag if flag is not None else mode == "full"


def enable_gradient_checkpointing(unet: torch.nn.Module, text_encoder: Optional[torch.nn.Module] = None) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs still give
    gradients to LoRA weights inside)."""
    unet.enable_gradient_checkpointing()
    if text_encoder is not None:
        text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_optimizer(groups: List[dict], use_8bit_adam: bool = False, weight_decay: float = 1e-2) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (moments in 8 bit: 2 instead of 8 bytes per parameter)."""
    if not use_8bit_adam:
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise MissingDependencyError(
            "--use-8bit-adam needs bitsandbytes, which is not installed: "
            "pip install 'threestudio-dreambooth3d[8bit]' (or pip install bitsandbytes), "
            "or drop --use-8bit-adam") from e
    return bnb.optim.AdamW8bit(groups, weight_decay=weight_decay)


def cast_frozen(modules: Iterable[torch.nn.Module], dtype: Optional[torch.dtype]) -> None:
    """Store frozen weights in the autocast dtype (halves their memory); trained ones stay fp32."""
    if dtype is None:
        return
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)


# --- state saves -----------------------------------------------------------------------------


class StateSavePolicy:
    """When to write the resumable training state: every ``every_s`` seconds and at the last step.

    Time, not steps: a full-finetune state is ~10 GiB at SD size, so a fixed step interval
    either writes gigabytes every minute on a fast GPU or loses hours on a slow one. Times are
    passed in (the trainer reads its clock once per step), so tests drive it with a fake clock."""

    def __init__(self, every_s: float, start: float):
        if every_s <= 0:
            raise ConfigError(f"--save-state-minutes must be > 0, not {every_s / 60:g}")
        self.every_s, self.last = every_s, start

    def due(self, step: int, last_step: int, now: float) -> bool:
        return step == last_step or now - self.last >= self.every_s

    def saved(self, now: float) -> None:
        self.last = now
