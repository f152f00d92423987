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

# where downloads and built-once helpers live (threestudio's tested checkout, the tiny eval
# models): $DREAMBOOTH3D_CACHE, else $XDG_CACHE_HOME/threestudio-dreambooth3d, else ~/.cache/...
CACHE_ENV = "DREAMBOOTH3D_CACHE"


def cache_dir() -> "Path":
    import os
    from pathlib import Path

    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "threestudio-dreambooth3d"

# MVDream (run --prior mvdream): the released 4-view model on the hub, and the GPU memory
# MVDream-threestudio asks for (its README: >= 20 GB for the 256 px, batch-4 stage)
MVDREAM_REPO = "MVDream/MVDream"
MVDREAM_FILE = "sd-v2.1-base-4view.pt"
MVDREAM_MIN_GPU_GB = 20
