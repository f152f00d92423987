"""``dreambooth3d finetune``: DreamBooth on 3-6 subject photos, several checkpoints from one run."""
from __future__ import annotations

import argparse
import json

from ..finetune_options import FinetuneOptions


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "finetune",
        help="DreamBooth-finetune Stable Diffusion on subject photos",
        description="DreamBooth-finetune Stable Diffusion on 3-6 photos of one subject. One run writes "
        "several checkpoints (OUT/checkpoints/NAME): DreamBooth3D uses an early 'partial' one for stage 1 "
        "and the 'full' one for stage 2. Rerunning the same command resumes an interrupted run.",
    )
    FinetuneOptions.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    """The output folder is checked and locked first: one finetune per folder."""
    from ..pipeline.checks import check_output_folder
    from ..pipeline.lock import folder_lock

    check_output_folder(args.out)
    with folder_lock(args.out):
        return _finetune(args)


def _finetune(args: argparse.Namespace) -> int:
    from ..core.dreambooth import train_dreambooth

    result = train_dreambooth(FinetuneOptions.from_namespace(args).dreambooth_config())
    print(json.dumps({k: str(v) for k, v in result.checkpoints.items()}, indent=2))
    return 0
