"""threestudio's launch.py on a CPU (or without tinycudann/nvdiffrast), from a threestudio checkout
that holds this repository in ``custom/``, with nothing pip-installed::

    python custom/threestudio-dreambooth3d/cpu_launch.py --config CONFIG --train \\
        --overrides custom/threestudio-dreambooth3d/configs/overrides/cpu-smoke.yaml KEY=VALUE ...

The same as ``python -m threestudio_dreambooth3d.cpu.compat launch.py ARGS`` (docs/THREESTUDIO.md).
"""
import importlib.util
import os
import sys

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == here:
        sys.path.pop(0)  # this repository's top-level folders (tests/, custom/) are not modules
    spec = importlib.util.spec_from_file_location("_dreambooth3d_checkout", os.path.join(here, "__init__.py"))
    checkout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checkout)
    checkout._load_extension()
    from threestudio_dreambooth3d.cpu.compat import main

    args = sys.argv[1:]
    if not (args[:1] and args[0].endswith(".py")):
        args = ["launch.py", *args]
    if "THREESTUDIO_ROOT" not in os.environ and os.path.isfile(args[0]):
        args = ["--threestudio-root", os.path.dirname(os.path.abspath(args[0])), *args]  # the checkout run from
    main(args)
