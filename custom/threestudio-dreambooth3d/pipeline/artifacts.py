"""Turning threestudio's trial outputs into things to look at: the newest video, mesh files, a GLB."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import List, Optional

from .manifest import raise_if_disk_full

_IT = re.compile(r"^it(\d+)-")


def latest(save_dir: Path, suffix: str) -> Optional[Path]:
    """threestudio names results ``it{step}-{suffix}`` in a trial's save/; the highest step wins."""
    found = [(int(m.group(1)), p) for p in Path(save_dir).glob(f"it*-{suffix}") if (m := _IT.match(p.name))]
    return max(found)[1] if found else None


def copy_into(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    except OSError as e:
        raise_if_disk_full(e, dst)
        raise
    return dst


def obj_to_glb(obj: Path, glb: Path) -> dict:
    """Convert threestudio's OBJ (+ MTL + texture) with trimesh; returns what the GLB holds."""
    import trimesh

    mesh = trimesh.load(obj, force="mesh", process=False)
    if len(mesh.faces) == 0:
        raise RuntimeError(f"{obj} has no faces: the NeRF is empty at the isosurface threshold (train longer or "
                           "lower system.geometry.isosurface_threshold).")
    try:
        mesh.export(glb)
    except OSError as e:
        raise_if_disk_full(e, glb)
        raise
    uv = getattr(mesh.visual, "uv", None)
    return {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)), "uv": uv is not None and len(uv) > 0}


def mesh_files(export_dir: Path) -> List[Path]:
    """The OBJ, its MTL and texture images as threestudio's mesh exporter wrote them."""
    return sorted(p for p in Path(export_dir).iterdir() if p.is_file())
