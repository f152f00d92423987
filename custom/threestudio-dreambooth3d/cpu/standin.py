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


def torchvision_mismatch() -> "str | None":
    """Why the installed torchvision's compiled ops cannot load beside the installed torch, read from
    their metadata without importing either (None: no torchvision, or nothing known against it):
    PyPI's torchvision wheels are CUDA builds, and beside the CPU torch wheel (``+cpu``) their ops
    library does not load."""
    import importlib.metadata as md

    try:
        tv, torch = md.version("torchvision"), md.version("torch")
    except md.PackageNotFoundError:
        return None
    if torch.endswith("+cpu") and not tv.endswith("+cpu"):
        return f"torchvision {tv} is a CUDA build (PyPI's), this torch {torch} is the CPU build"
    return None


# torchvision registers fake kernels for these two ops whether or not its compiled ops loaded
# (torchvision/_meta_registrations.py), so without them its import fails: "operator torchvision::nms
# does not exist". Declared here (no kernel), torchvision imports with its Python parts (transforms,
# models); calling nms raises torchvision's own "Couldn't load custom C++ ops".
_UNCONDITIONAL_OPS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                      "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_KEEP: list = []  # a torch.library.Library drops its definitions when collected


class TorchvisionWithoutOps:
    """A meta-path finder that, the first time torchvision is looked for, declares the op schemas its
    import needs when its compiled ops cannot load here (:func:`torchvision_mismatch`), then steps
    aside: the real torchvision is found and imported as usual."""

    def find_spec(self, name, path=None, target=None):
        import sys

        if name != "torchvision":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # decided once
        if torchvision_mismatch():
            import torch

            lib = torch.library.Library("torchvision", "FRAGMENT")
            for schema in _UNCONDITIONAL_OPS:
                lib.define(schema)
            _KEEP.append(lib)
        return None


def let_torchvision_import_without_its_ops() -> None:
    """Install :class:`TorchvisionWithoutOps` unless torchvision is already imported (cheap: no import)."""
    import sys

    if "torchvision" not in sys.modules and not any(isinstance(f, TorchvisionWithoutOps) for f in sys.meta_path):
        sys.meta_path.insert(0, TorchvisionWithoutOps())
