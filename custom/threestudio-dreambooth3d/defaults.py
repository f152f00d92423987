"""Defaults and mode names shared by the CLI, the presets, the core and the threestudio configs.

Torch-free: the CLI builds its ``--help`` from these without loading a model library.
"""
from typing import Literal, get_args

# the base model DreamBooth3D's paper setting maps to (SD 2.1 base, 512 px)
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"

# DreamBooth: train LoRA adapters or the whole UNet (and text encoder)
TrainMode = Literal["lora", "full"]
TRAIN_MODES = get_args(TrainMode)

# autocast dtype for DreamBooth training ("auto": bf16 where the GPU has it, else fp16; fp32 on a CPU)
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
MIXED_PRECISIONS = get_args(MixedPrecision)

# what `finetune --base-model` personalises: Stable Diffusion, or MVDream's multi-view model
BaseModel = Literal["sd", "mvdream"]
BASE_MODELS = get_args(BaseModel)
