"""threestudio adapters: thin registered wrappers around the threestudio-free core.

Importing this package registers ``dreambooth-sds-guidance``,
``dreambooth-prompt-processor``, ``pseudo-multiview-datamodule`` and
``dreambooth3d-system`` with threestudio. One case is deferred: threestudio not yet
imported and its CUDA-only extension tinycudann absent (a CPU machine), where importing
threestudio would fail; ``cpu_compat.enable_cpu_mode()`` then registers them once
threestudio can be imported. Any other import error propagates.
"""
import importlib.util
import logging
import sys

_log = logging.getLogger(__name__)


def register() -> None:
    """Import the adapter modules so their ``@threestudio.register`` decorators run (idempotent)."""
    from . import datamodule, guidance, prompt_processor, system  # noqa: F401


def _threestudio_importable() -> bool:
    return "threestudio" in sys.modules or importlib.util.find_spec("tinycudann") is not None


if _threestudio_importable():
    register()
else:
    _log.info(
        "threestudio is present but tinycudann is not (a CPU machine?): dreambooth3d adapters register "
        "when threestudio_dreambooth3d.cpu_compat.enable_cpu_mode() imports threestudio."
    )
