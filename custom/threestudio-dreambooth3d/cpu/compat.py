"""Run threestudio where its CUDA extensions are missing: on a CPU, or on a GPU without them.

Why this exists: threestudio is written for CUDA, and five things stop it on a CPU even
with pure-torch configs, some of them on a GPU machine too:

1. it imports CUDA-only extensions at import time (``tinycudann`` in utils/misc.py and
   models/networks.py, ``nvdiffrast`` in utils/rasterize.py, ``envlight`` in the PBR
   material); tinycudann is also the most common failed install on GPU machines;
2. the real configs build tinycudann encodings (hash grid, spherical harmonics):
   ``cpu.tinycudann`` is a pure-torch version, put in place of a missing tinycudann
   with one warning that it is slower;
3. nerfacc's packed ops behind every volume renderer have only CUDA kernels, and the
   mesh exporter bakes textures with nvdiffrast (pure-torch versions: ``cpu.nerfacc``
   for CPU tensors, and for CUDA tensors when nerfacc's extension cannot be built;
   ``cpu.nvdiffrast``);
4. (CPU only) ``threestudio.utils.misc.get_device()`` answers ``cuda:RANK``,
   ``models/networks.py`` puts modules on ``cuda:get_rank()``, and ``cleanup()`` calls
   ``tinycudann.free_temporary_memory``; these are imported *by name* into many
   modules, so patching ``misc`` alone is not enough;
5. (CPU only) ``launch.py`` builds its ``Trainer`` with ``accelerator="gpu"``.

:func:`enable` handles them, in that order, and must be called *before* threestudio is
imported. It is never called implicitly, and it changes nothing that works: a module is
replaced only when it cannot be imported, the CPU patches apply only when no GPU is
visible. ``python -m threestudio_dreambooth3d.cpu.compat launch.py ARGS`` runs
threestudio's launch.py this way (what the pipeline calls).
"""
from __future__ import annotations

import gc
import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Union

import torch

from ..environment.threestudio_root import locate_threestudio
from .standin import StandIn, StandInFinder, importable

log = logging.getLogger(__name__)

CUDA_ONLY_MODULES = ("tinycudann", "nvdiffrast", "nvdiffrast.torch", "envlight")
_ENABLED = False


class SlowFallbackWarning(UserWarning):
    """A pure-torch stand-in replaces a CUDA extension: it works, more slowly."""


class _MissingRasterizerContext:
    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError(
            "nvdiffrast is not installed (cpu_compat stand-in): threestudio's mesh rasterisation needs it. "
            "On a CPU, threestudio_dreambooth3d.cpu.nvdiffrast.install() provides the ops the mesh exporter uses."
        )


def install_torchvision_stand_in() -> bool:
    """threestudio imports torchvision in three modules it loads (zero123 guidance, the co3d data,
    the perceptual loss), none of which our stages use. Where torchvision does not import (not
    installed, or PyPI's build beside a CPU torch: "operator torchvision::nms does not exist"),
    a stand-in takes its place so threestudio loads; using it raises, saying why. True if installed."""
    if any(isinstance(f, StandInFinder) for f in sys.meta_path):
        return True
    try:
        importlib.import_module("torchvision")
        return False
    except Exception as e:  # ImportError, or RuntimeError from a build for another torch
        why = f"torchvision does not import here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the half-imported broken package
    sys.meta_path.insert(0, StandInFinder(
        "torchvision", why, "threestudio_dreambooth3d.cpu.compat put a stand-in in its place: our stages do not "
        "use it. For threestudio's zero123 guidance, co3d data or perceptual loss install torch and torchvision "
        "from one index (pip install torch==2.14.1 torchvision==0.29.1)"))
    warnings.warn(f"{why}: threestudio loads with a torchvision stand-in (its zero123 guidance, co3d data and "
                  "perceptual loss are unavailable)", UserWarning, stacklevel=2)
    return True


def install_stand_ins() -> List[str]:
    """Put stand-ins for the CUDA-only extensions that cannot be imported, and for a torchvision
    that does not import; returns their names."""
    installed = ["torchvision"] if install_torchvision_stand_in() else []
    for name in CUDA_ONLY_MODULES:
        if name in sys.modules or importable(name):
            continue
        if name == "tinycudann":
            from . import tinycudann as module

            sys.modules[name] = module
            installed.append(name)
            warnings.warn(
                "tinycudann is not importable: using the pure-torch stand-in threestudio_dreambooth3d.cpu.tinycudann "
                "(same encodings and checkpoints, several times slower on a GPU; pip install tinycudann for speed).",
                SlowFallbackWarning, stacklevel=2,
            )
            continue
        module = StandIn(name)
        module.__path__ = []  # lets ``import nvdiffrast.torch`` resolve the child
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)  # find_spec() works
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
        installed.append(name)
    if "nvdiffrast.torch" in installed:
        # named in type annotations of threestudio.utils.rasterize at import time
        dr = sys.modules["nvdiffrast.torch"]
        dr.RasterizeGLContext = dr.RasterizeCudaContext = _MissingRasterizerContext
    return installed


def cpu_device() -> torch.device:
    return torch.device("cpu")


def cpu_cleanup() -> None:
    gc.collect()


def _cpu_rank() -> str:
    # networks.py uses get_rank() only as a device: for ``torch.cuda.device(get_rank())``
    # (see _CpuTolerantCudaDevice) and ``torch.zeros(..., device=get_rank())``
    return "cpu"


class _CpuTolerantCudaDevice(torch.cuda.device):
    """``torch.cuda.device("cpu")`` selects nothing, as ``torch.cuda.device(-1)`` does (it raises otherwise)."""

    def __init__(self, device):
        super().__init__(-1 if str(device) == "cpu" else device)


def patch_threestudio_device() -> int:
    """Point ``get_device``/``cleanup`` at the CPU in every loaded threestudio module, and
    ``models.networks``' device choice (its ``get_rank``) at the CPU, which
    ``torch.cuda.device`` then accepts as "no CUDA device".

    Returns how many module attributes were replaced. Modules imported later see the
    patched ``threestudio.utils.misc`` functions.
    """
    misc = importlib.import_module("threestudio.utils.misc")
    originals = {"get_device": misc.get_device, "cleanup": misc.cleanup}
    replacements = {"get_device": cpu_device, "cleanup": cpu_cleanup}
    count = 0
    for mod_name, module in list(sys.modules.items()):
        if module is None or not mod_name.startswith("threestudio"):
            continue
        for attr, original in originals.items():
            if getattr(module, attr, None) is original:
                setattr(module, attr, replacements[attr])
                count += 1
    networks = importlib.import_module("threestudio.models.networks")
    if networks.get_rank is misc.get_rank:
        networks.get_rank = _cpu_rank
        torch.cuda.device = _CpuTolerantCudaDevice  # type: ignore[misc]
        count += 1
    return count


def patch_lightning_trainer() -> None:
    """launch.py asks for ``accelerator="gpu"``; on a CPU-only machine make that the CPU.

    Mixed fp16 precision, which GPU configs ask for, does not exist on a CPU: use fp32.
    """
    import pytorch_lightning as pl

    if getattr(pl.Trainer, "_cpu_compat", False):
        return
    base = pl.Trainer

    class CPUTrainer(base):  # type: ignore[misc, valid-type]
        _cpu_compat = True

        def __init__(self, *args, **kwargs):
            if kwargs.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
                kwargs["accelerator"], kwargs["devices"] = "cpu", 1
                if str(kwargs.get("precision", "32")).startswith("16"):
                    kwargs["precision"] = "32-true"
            super().__init__(*args, **kwargs)

    CPUTrainer.__name__ = CPUTrainer.__qualname__ = "Trainer"
    pl.Trainer = CPUTrainer


def enable(threestudio_root: Optional[Union[str, Path]] = None, cpu: Optional[bool] = None,
           register_adapters: bool = True) -> None:
    """Make threestudio importable and runnable here, import it, register our adapters.

    ``threestudio_root`` (or $THREESTUDIO_ROOT, else the importable package: the one locator,
    :func:`~..environment.threestudio_root.locate_threestudio`) is the threestudio imported: put
    first on ``sys.path`` unless it is the importable one already. Missing CUDA extensions get
    stand-ins on any machine; ``cpu`` (default: no GPU visible) adds the CPU patches. Raises
    :class:`ThreestudioNotFoundError` (an ImportError) naming the fix when threestudio is not
    found or a given folder is not a threestudio checkout. ``register_adapters=False`` leaves
    registration to launch.py's loading of ``custom/`` (a test of that path).
    """
    global _ENABLED
    if _ENABLED:
        return
    if "threestudio" in sys.modules:
        raise RuntimeError("cpu.compat.enable() must run before threestudio is imported")
    cpu = not torch.cuda.is_available() if cpu is None else cpu
    if cpu and torch.cuda.is_available():
        log.warning("threestudio in CPU mode on a machine with a GPU: it will run on the CPU")
    root = locate_threestudio(threestudio_root, need_launch=False, explicit_flag="--threestudio-root")
    spec = importlib.util.find_spec("threestudio")
    if spec is None or spec.origin is None or Path(spec.origin).resolve().parents[1] != root:
        # the threestudio asked for is the one imported, even when another is on PYTHONPATH or installed
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
    stand_ins = install_stand_ins()
    from . import nerfacc as nerfacc_cpu
    from . import nvdiffrast as nvdiffrast_cpu

    nerfacc_cpu.install()
    nvdiffrast_cpu.install()  # threestudio's mesh exporter rasterises even for a NeRF
    if cpu:
        patch_lightning_trainer()
    importlib.import_module("threestudio")
    if cpu:
        patch_threestudio_device()
    _ENABLED = True
    log.info("threestudio %s mode (stand-ins for %s)", "CPU" if cpu else "GPU", ", ".join(stand_ins) or "nothing")
    if register_adapters:
        from ..registration import register

        register()


def expand_overrides(args: List[str]) -> List[str]:
    """``--overrides FILE.yaml`` (a YAML of config keys, e.g. configs/overrides/cpu-smoke.yaml) becomes
    its dotlist, placed first so the ``KEY=VALUE`` arguments given on the command line win."""
    from omegaconf import OmegaConf

    from ..errors import ConfigError

    files, rest, it = [], [], iter(args)
    for a in it:
        if a == "--overrides" or a.startswith("--overrides="):
            path = a.partition("=")[2] or next(it, "")
            if not Path(path).is_file():
                raise ConfigError(f"--overrides {path!r}: no such file (a YAML of config keys, e.g. "
                                  "configs/overrides/cpu-smoke.yaml)")
            files.append(path)
        else:
            rest.append(a)
    dotlist = []
    for path in files:
        flat = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        dotlist += [f"{k}={v}" for k, v in _flatten(flat or {}).items()]
    return dotlist + rest


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = "null" if v is None else (str(v).lower() if isinstance(v, bool) else v)
    return out


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m threestudio_dreambooth3d.cpu.compat [--threestudio-root DIR] launch.py ARGS``.

    Runs threestudio's launch.py after :func:`enable` from the current folder (launch.py loads
    ``./custom``, so run it from this project's root). A bare ``launch.py`` is looked up
    in the threestudio root.
    """
    import runpy

    argv = list(sys.argv[1:] if argv is None else argv)
    root = None
    if argv[:1] == ["--threestudio-root"]:
        root, argv = argv[1], argv[2:]
    if not argv or not argv[0].endswith(".py"):
        raise SystemExit("usage: python -m threestudio_dreambooth3d.cpu.compat [--threestudio-root DIR] launch.py "
                         "[--overrides FILE.yaml] ARGS...")
    argv = [argv[0], *expand_overrides(argv[1:])]
    enable(root)
    script = Path(argv[0])
    if not script.is_file():
        script = locate_threestudio(root, need_launch=True, explicit_flag="--threestudio-root") / script.name
    sys.argv = [str(script)] + argv[1:]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    # run the imported module's main, not this __main__ copy: module state and the
    # stand-in class must be the ones the rest of the package sees
    from threestudio_dreambooth3d.cpu.compat import main as _main

    _main()
