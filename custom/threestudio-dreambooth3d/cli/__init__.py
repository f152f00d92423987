"""``dreambooth3d`` command line: finetune, run (whole pipeline), eval, sweep (many runs + a report).

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and
``run(args)``; this file only wires them so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

SUBCOMMANDS = {
    "finetune": "threestudio_dreambooth3d.cli.finetune",
    "run": "threestudio_dreambooth3d.cli.run",
    "eval": "threestudio_dreambooth3d.cli.eval",
    "sweep": "threestudio_dreambooth3d.cli.sweep",
    "doctor": "threestudio_dreambooth3d.cli.doctor",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreambooth3d",
        description="DreamBooth3D for threestudio: a few photos of a subject + a prompt -> a 3D asset.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("threestudio_dreambooth3d"):
                continue  # subcommand not part of this install
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ..errors import DreamBooth3DError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"\ndreambooth3d {args.command}: interrupted", file=sys.stderr)
        return 130
    except (DreamBooth3DError, FileNotFoundError, ValueError, RuntimeError) as e:
        # user-facing problems (bad photos, missing model folder, mismatched run): one clear line
        print(f"dreambooth3d {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
