"""Images as the package draws them: renders and photos to uint8 arrays, an evenly spaced pick
of a turntable's frames, the one contact-sheet builder (pseudo-view sets, eval's view grid) and
the one animated-GIF writer (summary.html's and the sweep report's turntables)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, TypeVar, Union

import numpy as np
import torch

from ..errors import PseudoViewError

if TYPE_CHECKING:
    from PIL import Image

ImagesLike = Union[torch.Tensor, np.ndarray, Sequence[Any]]
T = TypeVar("T")


def evenly_spaced(items: Sequence[T], k: int) -> List[T]:
    """``k`` items (at most all of them) spread evenly from the first to the last."""
    n = len(items)
    k = max(1, min(n, k))
    return [items[round(i * (n - 1) / (k - 1))] for i in range(k)] if k > 1 else list(items[:1])


def to_uint8_images(images: ImagesLike, what: str, channels: int) -> List[np.ndarray]:
    """Images as a list of HxWxC uint8 arrays; accepts NHWC or NCHW, float [0, 1] or uint8."""
    from PIL import Image

    out = []
    for i, im in enumerate(images):  # a batch tensor/array iterates over its views
        if isinstance(im, Image.Image):
            im = np.asarray(im.convert("RGB" if channels == 3 else "L"))
        arr = im.detach().cpu().numpy() if isinstance(im, torch.Tensor) else np.asarray(im)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim == 3 and arr.shape[0] == channels and arr.shape[-1] != channels:
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        if arr.ndim != 3 or arr.shape[-1] != channels:
            raise PseudoViewError(f"{what} {i}: expected HxWx{channels} or {channels}xHxW, got shape {arr.shape}")
        if arr.dtype == np.uint8:
            out.append(np.ascontiguousarray(arr))
            continue
        if arr.dtype == bool:
            arr = arr.astype(np.float32)
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all() or arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
            raise PseudoViewError(f"{what} {i}: float values must be finite and in [0, 1], "
                                  f"got [{np.nanmin(arr):.3g}, {np.nanmax(arr):.3g}]")
        out.append(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return out


def make_contact_sheet(images: ImagesLike, labels: Optional[Sequence[str]] = None, columns: Optional[int] = None,
                       label_height: int = 14, min_tile_width: int = 128,
                       marks: Optional[Sequence[Optional[str]]] = None,
                       tile_height: Optional[int] = None) -> "Image.Image":
    """All views in a grid (``columns``, default about square), each with its label in a strip under it.

    ``labels`` None: no strips. ``tile_height``: every tile resized (bicubic) to that height and
    the first view's aspect ratio, for thumbnails of large renders. Otherwise tiles narrower than
    ``min_tile_width`` are enlarged by a whole factor (nearest neighbour) so 64-pixel renders stay
    visible and their labels fit; a label is clipped to its own tile. ``marks``: per tile None or
    a note (why a view was dropped): the tile gets a red frame and the note a red line under its label.
    """
    from PIL import Image, ImageDraw

    arrays = to_uint8_images(images, "image", 3)
    if not arrays:
        raise ValueError("no images for a contact sheet")
    if tile_height is not None:
        size = (max(1, round(tile_height * arrays[0].shape[1] / arrays[0].shape[0])), tile_height)
        arrays = [np.asarray(Image.fromarray(a).resize(size, Image.BICUBIC)) for a in arrays]
    if labels is None:
        labels, label_height = [""] * len(arrays), 0
    if len(labels) != len(arrays):
        raise ValueError(f"{len(labels)} labels for {len(arrays)} images")
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    scale = 1 if tile_height is not None else max(1, math.ceil(min_tile_width / w))
    h, w = h * scale, w * scale
    marks = list(marks) if marks is not None else [None] * len(arrays)
    if len(marks) != len(arrays):
        raise ValueError(f"{len(marks)} marks for {len(arrays)} images")
    if any(marks):
        label_height *= 2  # a second line for the note
    columns = columns or math.ceil(math.sqrt(len(arrays)))
    rows = math.ceil(len(arrays) / columns)
    sheet = Image.new("RGB", (columns * w, rows * (h + label_height)), "white")
    for i, (arr, label, mark) in enumerate(zip(arrays, labels, marks)):
        x, y = (i % columns) * w, (i // columns) * (h + label_height)
        sheet.paste(Image.fromarray(arr.repeat(scale, 0).repeat(scale, 1)), (x, y))
        if mark:
            ImageDraw.Draw(sheet).rectangle([x, y, x + w - 1, y + h - 1], outline=(220, 0, 0), width=max(2, w // 40))
        if label_height:
            strip = Image.new("RGB", (w, label_height), "white")
            draw = ImageDraw.Draw(strip)
            draw.text((2, 1), label, fill="black")
            if mark:
                draw.text((2, label_height // 2 + 1), mark, fill=(200, 0, 0))
            sheet.paste(strip, (x, y + h))
    return sheet


def save_gif(frames: Sequence["Image.Image"], path: Union[str, Path], frame_ms: int) -> Path:
    """``frames`` as an animated GIF that loops forever, ``frame_ms`` per frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=frame_ms, loop=0)
    return path
