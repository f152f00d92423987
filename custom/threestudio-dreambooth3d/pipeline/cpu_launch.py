"""``python -m threestudio_dreambooth3d.pipeline.cpu_launch --threestudio-root DIR launch.py ARGS``.

threestudio's launch.py on a CPU, as ``python -m threestudio_dreambooth3d.cpu_compat``
runs it, plus the pure-torch nvdiffrast ops threestudio's mesh exporter needs
(:mod:`threestudio_dreambooth3d.nvdiffrast_cpu`), so the smoke preset's ``--export``
writes a textured mesh too.
"""
from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> None:
    from .. import cpu_compat, nvdiffrast_cpu

    argv = list(sys.argv[1:] if argv is None else argv)
    root = argv[1] if argv[:1] == ["--threestudio-root"] and len(argv) > 1 else None
    cpu_compat.enable_cpu_mode(root)
    nvdiffrast_cpu.install()
    cpu_compat.main(argv)


if __name__ == "__main__":
    main()
