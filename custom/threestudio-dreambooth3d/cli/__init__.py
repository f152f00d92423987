"""``dreambooth3d`` command line: finetune, run (whole pipeline), eval, sweep (many runs + a report),
doctor (what this machine has), convert-mvdream (the released MVDream checkpoint -> a model folder),
app (a web page for run).

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and
``run(args)``, registered in :data:`SUBCOMMANDS`. The cli modules import nothing heavy
at module level (torch, diffusers, threestudio load inside ``run``), so ``--help`` is
quick; a CI test holds that.

Errors: our domain errors (:class:`~threestudio_dreambooth3d.errors.DreamBooth3DError`:
bad photos, a missing model folder, a mismatched run...) print one line and exit 2;
anything else is a bug or an environment problem (CUDA out of memory) and shows its
traceback, unless ``--quiet``. ``--debug`` shows tracebacks for our errors too.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from typing import List, Optional

from ..errors import DreamBooth3DError, Terminated, interrupt_exit_code
from ..log_routing import PACKAGE_LOGGER, hide_captured

# name -> module; each module has add_parser(subparsers) and run(args)
SUBCOMMANDS = {
    "finetune": "threestudio_dreambooth3d.cli.finetune",
    "run": "threestudio_dreambooth3d.cli.run",
    "eval": "threestudio_dreambooth3d.cli.eval",
    "sweep": "threestudio_dreambooth3d.cli.sweep",
    "doctor": "threestudio_dreambooth3d.cli.doctor",
    "convert-mvdream": "threestudio_dreambooth3d.cli.convert_mvdream",
    "app": "threestudio_dreambooth3d.cli.app",
    "tiny-model": "threestudio_dreambooth3d.cli.tiny_model",
}


def configure_logging(verbosity: int = 0) -> None:
    """Logging for a command-line run, set once: our loggers at INFO (``-v``: DEBUG, ``-q``: WARNING),
    everything else (diffusers, transformers, Lightning...) at WARNING."""
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    root = logging.getLogger()
    if not any(getattr(h, "_dreambooth3d", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._dreambooth3d = True  # type: ignore[attr-defined]
        handler.addFilter(hide_captured)  # third-party messages a command sends to its log file
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(PACKAGE_LOGGER).setLevel(level)


def _add_global_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """-v/-q/--debug, before or after the subcommand (the subcommand's copy only overrides when given)."""
    keep = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="count", help="more log output (our debug messages)",
                        **({"default": 0} if defaults else keep))
    parser.add_argument("-q", "--quiet", action="store_true", **keep,
                        help="warnings only; an unexpected error prints one line instead of its traceback")
    parser.add_argument("--debug", action="store_true", **keep, help="show the traceback of every error, ours included")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreambooth3d",
        description="DreamBooth3D for threestudio: a few photos of a subject + a prompt -> a 3D asset.",
    )
    _add_global_flags(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        mod = importlib.import_module(module)  # a missing module is a broken install: let it raise
        p = mod.add_parser(sub)
        _add_global_flags(p, defaults=False)
        p.set_defaults(_run=mod.run)
    return parser


def terminate_like_ctrl_c() -> None:
    """SIGTERM (a scheduler, ``kill``) raises :class:`~threestudio_dreambooth3d.errors.Terminated`,
    a KeyboardInterrupt: the running command is stopped with its children as on Ctrl-C."""
    def handler(signum, frame):
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(-1 if args.quiet else args.verbose)
    terminate_like_ctrl_c()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as e:
        print(f"\ndreambooth3d {args.command}: interrupted", file=sys.stderr)
        return interrupt_exit_code(e)
    except DreamBooth3DError as e:
        if args.debug:
            raise
        # user-facing problems (bad photos, missing model folder, mismatched run): one clear line
        print(f"dreambooth3d {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not args.quiet or args.debug:
            raise
        print(f"dreambooth3d {args.command}: {type(e).__name__}: {e} (rerun without --quiet for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
