"""threestudio-dreambooth3d: DreamBooth3D (subject-driven text-to-3D) for threestudio.

Two ways in, one module: ``pip install -e .`` imports this folder as
``threestudio_dreambooth3d``; threestudio's launch.py loads it from ./custom under
the folder name ``threestudio-dreambooth3d``. threestudio's registry refuses a name
twice, so under any other name this file only re-exports the canonical package.
"""
import importlib.util
import os
import sys

CANONICAL_NAME = "threestudio_dreambooth3d"

if __name__ != CANONICAL_NAME:
    if CANONICAL_NAME not in sys.modules:
        _spec = importlib.util.spec_from_file_location(
            CANONICAL_NAME,
            __file__,
            submodule_search_locations=[os.path.dirname(os.path.abspath(__file__))],
        )
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[CANONICAL_NAME] = _module
        _spec.loader.exec_module(_module)
    sys.modules[__name__] = sys.modules[CANONICAL_NAME]
else:
    __version__ = "0.1.0"

    def threestudio_available() -> bool:
        return importlib.util.find_spec("threestudio") is not None

    if threestudio_available():
        # Registers dreambooth-sds-guidance, the prompt processor, the datamodule and
        # dreambooth3d-system. Errors propagate: a broken threestudio must not look
        # like a missing one.
        from . import threestudio_ext  # noqa: F401
