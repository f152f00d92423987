"""``dreambooth3d doctor``: one table of what the pipeline needs and whether this machine has it."""
from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    from ..pipeline.presets import PRESETS

    p = sub.add_parser(
        "doctor",
        help="check this machine for what `dreambooth3d run` needs (threestudio, packages, GPU, model, disk)",
        description="One table: threestudio (root, commit), every Python package we and threestudio import "
        "(with the pip command for what is missing), CUDA and GPU memory, tinycudann/nvdiffrast/nerfacc "
        "and the fallback used without them, the base model, free disk. Exit code 1 when something the "
        "preset needs is missing; `dreambooth3d run` makes the same checks before any work.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="check for this preset of `run` (default: default, the GPU run)")
    p.add_argument("--model", default="", help="base model to look for (default: the preset's)")
    p.add_argument("--threestudio", default=None, help="threestudio checkout (default $THREESTUDIO_ROOT or the installed one)")
    p.add_argument("--prior", choices=["sd", "mvdream"], default="sd",
                   help="also check what run --prior mvdream needs: the MVDream model and GPU memory (default sd)")
    p.add_argument("--mvdream", default=None, metavar="FOLDER_OR_CKPT", help="the --mvdream the run will get")
    p.add_argument("--out", default=".", help="where the run will write, for the free-disk check (default .)")
    p.add_argument("--fix", action="store_true",
                   help="fix what can be fixed here: without a threestudio (--threestudio, $THREESTUDIO_ROOT, or "
                   "installed), git-fetch the tested commit into the cache folder (as `run` does); missing "
                   "packages are one install command, printed")
    return p


def run(args: argparse.Namespace) -> int:
    from ..environment.doctor import blocking, format_table, run_checks

    if args.fix:
        from ..environment.fetch import ensure_threestudio

        ensure_threestudio(args.threestudio)  # fetches only when none is given or installed
    rows = run_checks(args.preset, model=args.model or "", threestudio=args.threestudio, out=args.out,
                      prior=args.prior, mvdream=args.mvdream)
    print(format_table(rows))
    missing = blocking(rows)
    print()
    if missing:
        print(f"{len(missing)} missing for --preset {args.preset}: {', '.join(r.name for r in missing)}")
        return 1
    print(f"ready for --preset {args.preset}")
    return 0
