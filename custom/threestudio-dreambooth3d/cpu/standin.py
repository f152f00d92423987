"""The stand-in module class shared by the CPU compat layer and the pure-torch op modules.

Its own module so ``compat`` (which installs stand-ins) and the ``nvdiffrast``
fallback (which fills its stand-in) both import it without importing each other.
"""
from __future__ import annotations

import importlib
import types


class StandIn(types.ModuleType):
    """A module that imports fine and explains itself when anything real is asked of it."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"{self.__name__}.{name} is not available: {self.__name__} is not installed and "
            "threestudio_dreambooth3d.cpu.compat put a stand-in in its place so threestudio can "
            f"be imported without it. Install {self.__name__.split('.')[0]} on a CUDA machine for "
            "the feature that needs it."
        )


def importable(name: str) -> bool:
    """True when ``import name`` works: the one check for whether a stand-in or fallback is needed."""
    try:
        importlib.import_module(name)
        return True
    except Exception:  # a broken CUDA build fails with OSError/RuntimeError as well
        return False


class BrokenPackageStandIn(StandIn):
    """In place of an installed package that fails to import (torchvision built for another torch):
    imports fine, every submodule too; anything used raises, naming the import error and the fix."""

    why: str = ""
    fix: str = ""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{self.__name__}.{name} is not available: {self.why}. {self.fix}")


class StandInFinder:
    """A meta-path finder answering ``package`` and every ``package.*`` with a
    :class:`BrokenPackageStandIn` (first in ``sys.meta_path``, so the broken install is never tried)."""

    def __init__(self, package: str, why: str, fix: str) -> None:
        self.package, self.why, self.fix = package, why, fix

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery

        if name == self.package or name.startswith(self.package + "."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = BrokenPackageStandIn(spec.name)
        module.why, module.fix = self.why, self.fix
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


HIDDEN: dict = {}  # package -> why it was hidden


def torchvision_mismatch() -> "str | None":
    """Why the installed torchvision cannot import beside the installed torch, read from their
    metadata without importing either (None: no torchvision, or nothing known against it).
    PyPI's torchvision wheels are CUDA builds for one torch release: beside a ``+cpu`` torch, or
    another release, their compiled ops fail ("operator torchvision::nms does not exist")."""
    import importlib.metadata as md
    import re

    try:
        tv, torch = md.version("torchvision"), md.version("torch")
        requires = md.requires("torchvision") or []
    except md.PackageNotFoundError:
        return None
    pinned = next((m.group(1) for r in requires if (m := re.match(r"torch\s*==\s*([^\s;,]+)", r))), None)
    if pinned and pinned.split("+")[0] != torch.split("+")[0]:
        return f"torchvision {tv} is built for torch {pinned}, this is torch {torch}"
    if torch.endswith("+cpu") and not tv.endswith("+cpu"):
        return f"torchvision {tv} is a CUDA build (PyPI's), this torch {torch} is the CPU build"
    return None


def hide_broken_torchvision() -> None:
    """Make a torchvision that cannot import look absent (``sys.modules["torchvision"] = None``:
    ``importlib.util.find_spec`` answers None), so transformers' image processors and diffusers
    take their paths without it instead of importing it and failing. A working one is untouched."""
    import sys

    if "torchvision" in sys.modules:
        return
    why = torchvision_mismatch()
    if why:
        HIDDEN["torchvision"] = why
        sys.modules["torchvision"] = None  # type: ignore[assignment]
