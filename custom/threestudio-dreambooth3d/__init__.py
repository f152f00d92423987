"""threestudio-dreambooth3d: DreamBooth3D (subject-driven text-to-3D) for threestudio.

Two ways in, one module: ``pip install -e .`` imports this folder as
``threestudio_dreambooth3d``; threestudio's launch.py loads it from ./custom under
the folder name ``threestudio-dreambooth3d``. threestudio's registry refuses a name
twice, so under any other name this file aliases the canonical package.

Importing the package (or any core module) never imports threestudio. The adapters
register when launch.py loads ``custom/`` (the branch below) or on an explicit
:func:`register` call.
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
    # loaded by threestudio's launch.py: threestudio is importable, register the adapters
    sys.modules[CANONICAL_NAME].register()
else:
    __version__ = "0.1.0"

    from .cpu.standin import let_torchvision_import_without_its_ops

    # The install command's CPU torch sits beside PyPI's torchvision (a CUDA build, pulled in by
    # threestudio's requirements), whose import would fail: its Python parts import (see cpu.standin).
    let_torchvision_import_without_its_ops()

    def register() -> None:
        """Register the threestudio adapters (imports threestudio; idempotent)."""
        from .registration import register as _register

        _register()
