"""Counted GPU memory of a DreamBooth finetune per mode at Stable Diffusion 2.1 base size (no GPU needed).

Builds SD 2.1 base's UNet, VAE and text encoder from their real configs on the ``meta`` device
(no memory, no weights: ``tiny_models.sd.sd21_base_components``), adds rank-16 LoRA as the
trainer does, counts parameters, and prints what each mode holds on the GPU by
:func:`core.train_memory.training_bytes`: trained parameters fp32 + fp32 gradients + AdamW's
two fp32 moments (8-bit AdamW: 2 bytes), frozen weights in the autocast dtype (bf16/fp16) or
fp32. Activations (batch 1 instance + 1 class image at 512 px) come on top and are what
gradient checkpointing shrinks; the GPU suite measures the real peak.

    python benchmarks/dreambooth_memory.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GiB = 2**30


def counts():
    from threestudio_dreambooth3d.core import checkpoints, lora
    from threestudio_dreambooth3d.tiny_models.sd import sd21_base_components

    with torch.device("meta"):
        comps = sd21_base_components()
    params = {n: sum(p.numel() for p in comps[n].parameters()) for n in ("unet", "text_encoder", "vae")}
    lora_params = {}
    for name in checkpoints.MODULES:
        lora.add_lora(comps[name], 16, 16, checkpoints.LORA_TARGETS[name])
        lora_params[name] = sum(p.numel() for k, p in comps[name].named_parameters() if "lora_" in k)
    return params, lora_params


def main() -> str:
    from threestudio_dreambooth3d.core.train_memory import training_bytes

    params, lora_params = counts()
    rows = []
    for mode, te, label in (("lora", False, "LoRA r16 (UNet)"), ("lora", True, "LoRA r16 (UNet + text encoder)"),
                            ("full", False, "full UNet"), ("full", True, "full UNet + text encoder")):
        for amp in (True, False):
            for eight in (False, True):
                b = training_bytes(params, mode, te, amp=amp, use_8bit_adam=eight, lora_params=lora_params)
                rows.append({"mode": label, "precision": "bf16/fp16 autocast" if amp else "fp32",
                             "optimizer": "8-bit AdamW" if eight else "AdamW",
                             "trained params": f"{b.trained_params / 1e6:.1f}M",
                             "weights GiB": f"{b.weights / GiB:.2f}", "grads GiB": f"{b.grads / GiB:.2f}",
                             "optimizer GiB": f"{b.optimizer / GiB:.2f}", "total GiB": f"{b.total / GiB:.2f}",
                             "state file GiB": f"{b.state_file / GiB:.2f}"})
    title = ("Counted GPU memory of a DreamBooth finetune, SD 2.1 base ("
             + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in params.items())
             + "; LoRA r16: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in lora_params.items())
             + "), activations not included")
    return common.print_table(title, rows)


if __name__ == "__main__":
    main()
