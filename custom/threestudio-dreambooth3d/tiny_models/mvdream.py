"""A tiny random MVDream in our diffusers-style layout, built offline.

:func:`build_tiny_mvdream` writes ``unet/`` (a :class:`~..core.mvdream.MultiViewUNet`), and
the tiny SD's ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` plus
``model_index.json``: the folder ``dreambooth3d convert-mvdream`` writes, at toy size. Its
UNet layout is an original MVDream config (:data:`TINY_UNET_PARAMS`), so tests can also
write it in the released checkpoint layout and convert it back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

import torch

#: ``unet_config.params`` in the original's format: SD's layout at toy size (GroupNorm's 32
#: groups need channels in multiples of 32); the last level has no attention, as in SD.
TINY_UNET_PARAMS: Dict[str, Any] = dict(
    image_size=16, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[1],
    num_res_blocks=1, channel_mult=[1, 2], num_head_channels=16, use_spatial_transformer=True,
    use_linear_in_transformer=True, transformer_depth=1, context_dim=32, legacy=False, camera_dim=16,
)


def tiny_mvdream_unet(seed: int = 0, params: Dict[str, Any] = TINY_UNET_PARAMS):
    """A random MultiViewUNet of the tiny layout (diffusers' init: no zeroed layers)."""
    from ..core.mvdream import MultiViewUNet
    from ..core.mvdream_convert import diffusers_unet_config

    torch.manual_seed(seed)
    return MultiViewUNet(**diffusers_unet_config(params))


def build_tiny_mvdream(folder: Union[str, Path], seed: int = 0) -> Path:
    """Save a tiny MVDream model folder and return its path (an existing one is reused)."""
    from ..core.mvdream_convert import save_mvdream_folder
    from ..fs import atomic_write_dir
    from .sd import get_dummy_components

    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    comps = get_dummy_components(seed=seed, sample_size=TINY_UNET_PARAMS["image_size"],
                                 hidden_size=TINY_UNET_PARAMS["context_dim"])
    unet = tiny_mvdream_unet(seed)

    def write(tmp: Path) -> None:
        for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
            comps[part].save_pretrained(tmp / part)
        save_mvdream_folder(tmp, unet, {"tiny": True, "seed": seed, "unet_params": TINY_UNET_PARAMS})

    return atomic_write_dir(folder, write)
