"""``dreambooth3d convert-mvdream``: the released MVDream checkpoint -> a diffusers-style model folder."""
from __future__ import annotations

import argparse

from ..defaults import DEFAULT_MODEL


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert-mvdream",
        help="convert the released MVDream checkpoint into a model folder (for --base-model mvdream)",
        description="Read the released single-file MVDream checkpoint (e.g. sd-v2.1-base-4view.pt from the hub "
        "repo MVDream/MVDream) and write a diffusers-style folder: unet/ (the multi-view UNet, safetensors) "
        "plus vae/, text_encoder/, tokenizer/ and scheduler/ of a Stable Diffusion 2.1 base, which MVDream "
        "keeps. The checkpoint's own VAE and text-encoder weights are ignored.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="the released checkpoint (.pt/.ckpt/.safetensors)")
    p.add_argument("--config", default=None, metavar="LDM_YAML",
                   help="the original's model config (model.params.unet_config.params), for another layout "
                   "(default: sd-v2.1-base-4view's)")
    p.add_argument("--base", default=DEFAULT_MODEL, metavar="SD_FOLDER_OR_ID",
                   help=f"SD 2.1 base to take VAE, text encoder, tokenizer and scheduler from (default {DEFAULT_MODEL})")
    p.add_argument("--out", required=True, metavar="FOLDER", help="the model folder to write")
    return p


def run(args: argparse.Namespace) -> int:
    from ..core.mvdream_convert import convert_mvdream_checkpoint

    out = convert_mvdream_checkpoint(args.checkpoint, base=args.base, out=args.out, config=args.config)
    print(out)
    return 0
