"""A pseudo-view set on disk: stage 2 writes it, multi-view DreamBooth and stage 3 read it.

Layout (written atomically: a temporary folder renamed into place)::

    FOLDER/
      images/view_000.png, view_000.txt ...   translated views + caption (the DreamBooth
                                              trainer reads ``<image>`` + ``<stem>.txt``)
      masks/view_000.png ...                  optional: render opacity, 8-bit grey
      renders/view_000.png ...                optional: the untranslated renders
      cameras.json                            one entry per view, in view order
      contact_sheet.png                       every view labelled with its camera
      filter.json, dropped/                   when views were filtered (:mod:`.view_filter`):
                                              every view's scores and verdict; the dropped
                                              views (not in cameras.json, so nothing learns
                                              from them), marked on the contact sheet

A ``cameras.json`` entry: ``file``, ``mask`` (or null), ``render`` (or null),
``elevation_deg``, ``azimuth_deg``, ``distance``, ``fovy_deg``, ``c2w`` (4x4, threestudio's
convention, see :mod:`.cameras`), ``height``, ``width`` (of the image), ``view``
(front/side/back/overhead) and ``caption``. Angles are in degrees under names that say
so, because threestudio's camera batches keep ``fovy`` in radians.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import PseudoViewError
from . import cameras as cams
from .images import ImagesLike, make_contact_sheet, to_uint8_images
from .views import view_name
from ..errors import MissingFileError
from ..fs import atomic_write_dir

CAMERAS_FILE = "cameras.json"
CONTACT_SHEET = "contact_sheet.png"
FILTER_FILE = "filter.json"  # every view's filter scores and verdict (core.view_filter)
REGENERATE = "Rerun stage 2 to regenerate the set (launch.py --test with the stage-2 config, or `dreambooth3d run`)."
RECORD_KEYS = ("file", "elevation_deg", "azimuth_deg", "distance", "fovy_deg", "c2w", "height", "width")


@dataclass
class PseudoViewSet:
    folder: Path
    images: torch.Tensor  # [N, H, W, 3] float32 in [0, 1], threestudio's rgb layout
    masks: Optional[torch.Tensor]  # [N, H, W, 1] float32 in [0, 1]
    renders: Optional[torch.Tensor]  # [N, H, W, 3] float32 in [0, 1]
    cameras: List[Dict[str, Any]]  # the cameras.json entries
    captions: List[str]  # from the sidecar .txt files (what the trainer reads)

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def names(self) -> List[str]:
        return [Path(r["file"]).stem for r in self.cameras]

    def camera_batch(self, height: Optional[int] = None, width: Optional[int] = None,
                     with_rays: bool = False) -> Dict[str, Any]:
        """threestudio's camera batch of all views, at the image size unless given."""
        r = self.cameras
        return cams.camera_batch(
            torch.tensor([x["c2w"] for x in r]), [x["fovy_deg"] for x in r],
            height or r[0]["height"], width or r[0]["width"],
            [x["elevation_deg"] for x in r], [x["azimuth_deg"] for x in r], with_rays=with_rays,
        )


# ----------------------------------------------------------------------------- writing


def to_pil_images(images: ImagesLike) -> list:
    """Images (any form :func:`write_pseudo_views` takes) as PIL RGB images, e.g. for an encoder."""
    from PIL import Image

    return [Image.fromarray(a) for a in to_uint8_images(images, "image", 3)]


def _camera_records(cameras: Any, n: int) -> List[Dict[str, Any]]:
    """Per-view camera entries from a camera batch (threestudio keys, fovy in radians),
    a list of one-view batches, or a list of cameras.json entries (``*_deg`` keys)."""
    def num(v, i=0):
        return float(v.reshape(-1)[i]) if isinstance(v, torch.Tensor) else float(np.asarray(v).reshape(-1)[i])

    def from_batch(b, i):
        c2w = torch.as_tensor(b["c2w"], dtype=torch.float32).reshape(-1, 4, 4)[i]
        dist = num(b["camera_distances"], i) if "camera_distances" in b else float(c2w[:3, 3].norm())
        # angles to 1e-6 deg: float32 radians would otherwise print fovy 70 as 69.99999967
        return {"elevation_deg": round(num(b["elevation"], i), 6), "azimuth_deg": round(num(b["azimuth"], i), 6),
                "distance": round(dist, 6), "fovy_deg": round(math.degrees(num(b["fovy"], i)), 6),
                "c2w": c2w.tolist()}

    if isinstance(cameras, dict):
        count = torch.as_tensor(cameras["c2w"]).reshape(-1, 4, 4).shape[0]
        if count != n:
            raise PseudoViewError(f"cameras hold {count} views for {n} images")
        return [from_batch(cameras, i) for i in range(n)]
    cameras = list(cameras)
    if len(cameras) != n:
        raise PseudoViewError(f"{len(cameras)} cameras for {n} images")
    out = []
    for i, c in enumerate(cameras):
        if "fovy_deg" in c:
            rec = {k: float(c[k]) for k in ("elevation_deg", "azimuth_deg", "distance", "fovy_deg")}
            rec["c2w"] = torch.as_tensor(c["c2w"], dtype=torch.float32).reshape(4, 4).tolist()
        elif "fovy" in c:
            rec = from_batch(c, 0)
        else:
            raise PseudoViewError(f"camera {i}: expected a camera batch (threestudio keys) or a cameras.json "
                                  f"entry (elevation_deg, azimuth_deg, distance, fovy_deg, c2w); got keys {sorted(c)}")
        out.append(rec)
    return out


def _label(i: int, rec: Dict[str, Any]) -> str:
    return f"{i:03d} az{rec['azimuth_deg']:.0f} el{rec['elevation_deg']:.0f} {rec['view']}"


def write_pseudo_views(
    folder: Union[str, Path],
    images: ImagesLike,
    cameras: Any,
    captions: Union[str, Sequence[str]],
    masks: Optional[ImagesLike] = None,
    renders: Optional[ImagesLike] = None,
    view_names: Optional[Sequence[str]] = None,
    decisions: Optional[Sequence[Any]] = None,
    filter_info: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a pseudo-view set atomically and return its folder.

    ``images`` (and ``renders``): [N, H, W, 3] or [N, 3, H, W] tensors/arrays or a list
    of images, float in [0, 1] or uint8. ``cameras``: a camera batch from
    :mod:`.cameras` (or threestudio's), a list of one-view batches, or cameras.json
    entries. ``captions``: one per view (or one for all). ``masks``: [N, H, W(, 1)] or
    [N, 1, H, W], float in [0, 1], bool or uint8. ``view_names``: each camera's
    front/side/back/overhead as the captions name it (default: threestudio's default
    thresholds; stage 2 passes its prompt processor's, :class:`.views.ViewPrompts`).
    ``decisions``: one :class:`.view_filter.ViewDecision` per view; the dropped ones go to
    ``dropped/`` instead of the set, the contact sheet marks them, and ``filter_info``
    (:func:`.view_filter.filter_report`) is written as ``filter.json``.
    """
    from PIL import Image

    folder = Path(folder)
    rgb = to_uint8_images(images, "image", 3)
    n = len(rgb)
    if n == 0:
        raise PseudoViewError("no images to write")
    records = _camera_records(cameras, n)
    captions = [captions] * n if isinstance(captions, str) else list(captions)
    if len(captions) != n:
        raise PseudoViewError(f"{len(captions)} captions for {n} images")
    if view_names is None:
        view_names = [view_name(r["elevation_deg"], r["azimuth_deg"]) for r in records]
    if len(view_names) != n:
        raise PseudoViewError(f"{len(view_names)} view names for {n} images")
    mask_arrays = None if masks is None else to_uint8_images(masks, "mask", 1)
    render_arrays = None if renders is None else to_uint8_images(renders, "render", 3)
    for name, extra in (("masks", mask_arrays), ("renders", render_arrays)):
        if extra is not None:
            if len(extra) != n:
                raise PseudoViewError(f"{len(extra)} {name} for {n} images")
            for i, (a, b) in enumerate(zip(extra, rgb)):
                if a.shape[:2] != b.shape[:2]:
                    raise PseudoViewError(f"{name} {i} is {a.shape[1]}x{a.shape[0]}, its image {b.shape[1]}x{b.shape[0]}")

    if decisions is not None and len(decisions) != n:
        raise PseudoViewError(f"{len(decisions)} filter decisions for {n} images")
    keep = [bool(d.keep) for d in decisions] if decisions is not None else [True] * n
    if not any(keep):
        raise PseudoViewError("the filter dropped every pseudo view; keep at least one (pseudo_view_filter.min_views)")
    for i, (rec, arr, cap, view) in enumerate(zip(records, rgb, captions, view_names)):
        stem = f"view_{i:03d}"
        where = "images" if keep[i] else "dropped"
        rec.update(file=f"{where}/{stem}.png", mask=f"masks/{stem}.png" if mask_arrays else None,
                   render=f"renders/{stem}.png" if render_arrays else None, height=int(arr.shape[0]),
                   width=int(arr.shape[1]), view=view, caption=cap)

    def write(tmp: Path) -> None:
        (tmp / "images").mkdir()
        if not all(keep):
            (tmp / "dropped").mkdir()
        for i, rec in enumerate(records):
            Image.fromarray(rgb[i]).save(tmp / rec["file"])
            (tmp / rec["file"]).with_suffix(".txt").write_text(rec["caption"] + "\n")
        if mask_arrays:
            (tmp / "masks").mkdir()
            for rec, arr in zip(records, mask_arrays):
                Image.fromarray(arr[..., 0]).save(tmp / rec["mask"])
        if render_arrays:
            (tmp / "renders").mkdir()
            for rec, arr in zip(records, render_arrays):
                Image.fromarray(arr).save(tmp / rec["render"])
        # render | translation side by side when both exist: the sheet shows what stage 2 changed
        tiles = [np.concatenate([r, t], axis=1) for r, t in zip(render_arrays, rgb)] if render_arrays else rgb
        marks = [None if k else f"DROPPED: {getattr(d, 'reason', None) or 'filtered'}"
                 for k, d in zip(keep, decisions if decisions is not None else [None] * n)]
        make_contact_sheet(tiles, [_label(i, r) for i, r in enumerate(records)], marks=marks).save(tmp / CONTACT_SHEET)
        # one view per line: readable and diffable; only the kept views are the set
        kept = [r for r, k in zip(records, keep) if k]
        (tmp / CAMERAS_FILE).write_text("[\n" + ",\n".join(json.dumps(r) for r in kept) + "\n]\n")
        if filter_info is not None:
            (tmp / FILTER_FILE).write_text(json.dumps(filter_info, indent=1) + "\n")

    return atomic_write_dir(folder, write)


# ----------------------------------------------------------------------------- reading


def _load_png(path: Path, mode: str, rec_index: int, size) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise PseudoViewError(f"{path} is missing (listed in {CAMERAS_FILE}, entry {rec_index}). {REGENERATE}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise PseudoViewError(f"{path} is not a readable image ({e}). {REGENERATE}") from e
    if arr.shape[:2] != size:
        raise PseudoViewError(f"{path} is {arr.shape[1]}x{arr.shape[0]} but {CAMERAS_FILE} says "
                              f"{size[1]}x{size[0]}. {REGENERATE}")
    return arr


def _read_records(folder: Path) -> List[Dict[str, Any]]:
    path = folder / CAMERAS_FILE
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: no pseudo-view set here. {REGENERATE}")
    if not path.is_file():
        raise MissingFileError(f"{path} is missing, so {folder} is not a complete pseudo-view set. {REGENERATE}")
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PseudoViewError(f"{path} is not valid JSON ({e}). {REGENERATE}") from e
    if not isinstance(records, list) or not records:
        raise PseudoViewError(f"{path} must hold a non-empty list of per-view cameras. {REGENERATE}")
    for i, rec in enumerate(records):
        missing = [k for k in RECORD_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise PseudoViewError(f"{path}: entry {i} lacks {', '.join(missing)}. {REGENERATE}")
        try:
            c2w = np.asarray(rec["c2w"], dtype=np.float64)
        except (TypeError, ValueError):
            c2w = None
        if c2w is None or c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise PseudoViewError(f"{path}: entry {i} has a c2w that is not a finite 4x4 matrix. {REGENERATE}")
    sizes = {(r["height"], r["width"]) for r in records}
    if len(sizes) != 1:
        raise PseudoViewError(f"{path}: views differ in size {sorted(sizes)}; one set holds one size. {REGENERATE}")
    return records


def read_pseudo_views(folder: Union[str, Path]) -> PseudoViewSet:
    """Load a set written by :func:`write_pseudo_views`; errors name the bad file."""
    folder = Path(folder)
    records = _read_records(folder)
    size = (int(records[0]["height"]), int(records[0]["width"]))
    images, masks, renders, captions = [], [], [], []
    for i, rec in enumerate(records):
        img_path = folder / rec["file"]
        images.append(_load_png(img_path, "RGB", i, size))
        cap = img_path.with_suffix(".txt")
        if not cap.is_file():
            raise PseudoViewError(f"{cap} is missing: the caption of {img_path.name}. {REGENERATE}")
        captions.append(cap.read_text().strip())
        if rec.get("mask"):
            masks.append(_load_png(folder / rec["mask"], "L", i, size)[..., None])
        if rec.get("render"):
            renders.append(_load_png(folder / rec["render"], "RGB", i, size))
    for name, got in (("mask", masks), ("render", renders)):
        if got and len(got) != len(records):
            raise PseudoViewError(f"{folder / CAMERAS_FILE}: only some views have a {name}. {REGENERATE}")

    def stack(arrays):
        return torch.from_numpy(np.stack(arrays)).float() / 255.0 if arrays else None

    return PseudoViewSet(folder=folder, images=stack(images), masks=stack(masks), renders=stack(renders),
                         cameras=records, captions=captions)


def multiview_sets(azimuth_deg: Sequence[float], n_view: int = 4) -> List[List[int]]:
    """Indices of the views grouped into sets of ``n_view``, each set spread around the object.

    For the MVDream DreamBooth continued on a pseudo-view set: MVDream learns from ``n_view``
    views of one object at once. The views are sorted by azimuth and dealt out with a stride
    (set k takes sorted views k, k + S, k + 2S, ... with S = N // n_view sets), so each set
    spans the circle about evenly, as MVDream's own 4-view sets do; a remainder of fewer than
    S views is left out. Each view keeps its own camera.
    """
    n = len(azimuth_deg)
    if n_view < 1 or n < n_view:
        raise PseudoViewError(f"a pseudo-view set of {n} views cannot make a set of {n_view} views; "
                              f"stage 2 must write at least {n_view} (data.n_test_views)")
    order = sorted(range(n), key=lambda i: float(azimuth_deg[i]) % 360.0)
    sets = n // n_view
    return [[order[k + j * sets] for j in range(n_view)] for k in range(sets)]
