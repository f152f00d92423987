"""threestudio's way in: ``cd threestudio/custom && git clone <this repository>``.

threestudio's launch.py imports every folder under ``custom/`` as a module; for a clone of
this repository that is this file. It makes the extension (``custom/threestudio-dreambooth3d``
inside this repository) importable as ``threestudio_dreambooth3d`` and registers its
threestudio classes; nothing needs to be pip-installed. Anywhere else (pytest, setup.py)
this file does nothing: it acts only once threestudio is imported, as launch.py does first.
"""
import importlib.util
import os
import sys

_CANONICAL = "threestudio_dreambooth3d"
_INNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "custom", "threestudio-dreambooth3d")


def _load_extension():
    """The extension of this checkout as ``threestudio_dreambooth3d`` (one already imported wins)."""
    if _CANONICAL not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            _CANONICAL, os.path.join(_INNER, "__init__.py"), submodule_search_locations=[_INNER]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[_CANONICAL] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_CANONICAL]
            raise
    return sys.modules[_CANONICAL]


if "threestudio" in sys.modules:
    _load_extension().register()
