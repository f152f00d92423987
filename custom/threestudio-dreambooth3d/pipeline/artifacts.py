"""Turning threestudio's trial outputs into things to look at: the newest video, mesh files, a GLB."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import List, Optional

from ..formats import natural_key
from ..fs import raise_if_disk_full
from ..errors import MissingOutputError

_IT = re.compile(r"^it(\d+)-")


MESH_VIEWS = "mesh_views.png"  # results/: rendered pictures of the exported mesh


def latest(save_dir: Path, suffix: str) -> Optional[Path]:
    """threestudio names results ``it{step}-{suffix}`` in a trial's save/; the highest step wins."""
    found = [(int(m.group(1)), p) for p in Path(save_dir).glob(f"it*-{suffix}") if (m := _IT.match(p.name))]
    return max(found)[1] if found else None


PREVIEW_LOOP_S = 3.0  # an animated turntable preview loops no faster than this (a 4-frame smoke orbit: 0.75 s a frame)
PREVIEW_MAX_FRAMES = 60
PREVIEW_MAX_HEIGHT = 256


def turntable_preview(frames_dir: Path, dst: Path) -> Optional[Path]:
    """An animated GIF of threestudio's turntable frames (``it*-test/<i>.png``), looping forever,
    slow enough to watch however few frames there are; None when the folder has no frames."""
    from PIL import Image

    from ..core.images import evenly_spaced, save_gif

    frames = sorted(Path(frames_dir).glob("*.png"), key=lambda p: natural_key(p.name))
    if not frames:
        return None
    images = []
    for path in evenly_spaced(frames, PREVIEW_MAX_FRAMES):
        with Image.open(path) as im:
            img = im.convert("RGB")
        if img.height > PREVIEW_MAX_HEIGHT:
            img = img.resize((round(img.width * PREVIEW_MAX_HEIGHT / img.height), PREVIEW_MAX_HEIGHT))
        images.append(img)
    duration_ms = max(1000 // 30, round(1000 * PREVIEW_LOOP_S / len(images)))
    try:
        save_gif(images, dst, duration_ms)
    except OSError as e:
        raise_if_disk_full(e, dst)
        raise
    return dst


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
        raise MissingOutputError(f"{obj} has no faces: the NeRF is empty at the isosurface threshold (train longer or "
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


def render_mesh_views(mesh_path: Path, out_png: Path, n_views: int = 4, size: int = 256,
                      elevation_deg: float = 20.0) -> Path:
    """A strip of ``n_views`` pictures of the mesh around its up axis (z, threestudio's), so the
    summary shows the mesh itself. Pure numpy + PIL: flat-shaded faces painted far to near,
    coloured by the texture (or vertex colours) when the mesh has one."""
    import numpy as np
    import trimesh
    from PIL import Image, ImageDraw

    mesh = trimesh.load(mesh_path, force="mesh", process=False)
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    visual = mesh.visual
    try:
        if getattr(visual, "kind", None) == "texture":
            visual = visual.to_color()  # samples the texture at each vertex's UV
        colors = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        if colors.shape != (len(v), 3):
            raise ValueError("no per-vertex colours")
    except Exception:  # no texture or vertex colours
        colors = np.full((len(v), 3), 0.8)
    face_rgb = colors[f].mean(axis=1) if len(f) else np.zeros((0, 3))
    v = v - (v.min(0) + v.max(0)) / 2
    v /= max(np.abs(v).max(), 1e-8)
    strip = Image.new("RGB", (size * n_views, size), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    el = np.radians(elevation_deg)
    for k in range(n_views):
        az = 2 * np.pi * k / n_views
        rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(el), -np.sin(el)], [0, np.sin(el), np.cos(el)]])
        p = v @ (rx @ rz).T  # view space: x right, y depth (away), z up
        tri = p[f]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
        shade = 0.35 + 0.65 * np.abs(normals @ np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5]))
        order = np.argsort(-tri[:, :, 1].mean(axis=1))  # far to near
        xy = np.stack([(tri[:, :, 0] * 0.45 + 0.5) * size + k * size, (0.5 - tri[:, :, 2] * 0.45) * size], -1)
        rgb = np.clip(face_rgb * shade[:, None] * 255, 0, 255).astype(int)
        for i in order:
            draw.polygon([tuple(pt) for pt in xy[i]], fill=tuple(rgb[i]))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    strip.save(out_png)
    return out_png
