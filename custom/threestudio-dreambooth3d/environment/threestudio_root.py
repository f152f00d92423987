"""Where threestudio lives: the one locator for the pipeline, the CPU runner and the tests.

Rules, in order: an explicit folder (``--threestudio`` / ``--threestudio-root``), else
``$THREESTUDIO_ROOT``, else the installed ``threestudio`` package's parent folder. The
first of explicit/env that is set is the answer or an error: a wrong path is never
silently replaced by another threestudio. A *checkout* holds ``threestudio/__init__.py``
and, for running stages, ``launch.py``. Torch-free and never imports threestudio.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Union

from ..errors import ThreestudioNotFoundError

THREESTUDIO_HELP = (
    "Point at a threestudio checkout (the folder holding launch.py) with --threestudio PATH or "
    "THREESTUDIO_ROOT=PATH, or install threestudio from a checkout (pip install -e .). "
    "Get one with: git clone https://github.com/threestudio-project/threestudio; what it imports "
    "comes with this project's extra, pip install -e '.[threestudio]' (not threestudio's "
    "requirements.txt: its pins conflict with ours)"
)


def _missing(root: Path, need_launch: bool) -> Optional[str]:
    needs = ["threestudio/__init__.py"] + (["launch.py"] if need_launch else [])
    missing = [n for n in needs if not (root / n).is_file()]
    return " and ".join(missing) if missing else None


def locate_threestudio(explicit: Optional[Union[str, Path]] = None, need_launch: bool = True,
                       explicit_flag: str = "--threestudio") -> Path:
    """The threestudio root folder; raises :class:`ThreestudioNotFoundError` saying how to point at one.

    ``need_launch``: the folder must also hold launch.py (running stages needs it; importing
    threestudio does not).
    """
    for source, value in ((explicit_flag, explicit), ("THREESTUDIO_ROOT", os.environ.get("THREESTUDIO_ROOT"))):
        if value:
            root = Path(value).expanduser().resolve()
            if _missing(root, need_launch):
                raise ThreestudioNotFoundError(
                    f"{source}={value} is not a threestudio checkout: it needs "
                    f"{'launch.py and ' if need_launch else ''}threestudio/__init__.py. " + THREESTUDIO_HELP
                )
            return root
    spec = importlib.util.find_spec("threestudio")
    if spec is not None and spec.origin:
        root = Path(spec.origin).resolve().parents[1]
        if not need_launch or (root / "launch.py").is_file():
            return root
        raise ThreestudioNotFoundError(
            f"threestudio is installed ({Path(spec.origin).parent}) but without its launch.py. " + THREESTUDIO_HELP
        )
    raise ThreestudioNotFoundError("threestudio not found. " + THREESTUDIO_HELP)


def find_threestudio_root(explicit: Optional[Union[str, Path]] = None, need_launch: bool = False) -> Optional[Path]:
    """:func:`locate_threestudio` that answers None instead of raising (for skips and probes)."""
    try:
        return locate_threestudio(explicit, need_launch=need_launch)
    except ThreestudioNotFoundError:
        return None
