"""Subject photos in, model-ready tensors out, with errors that name the bad file."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch

from ..errors import SubjectImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# 8-bit modes only: 16-bit/float images (I;16, I, F) would be silently clipped by PIL
SUPPORTED_MODES = ("RGB", "RGBA", "L", "LA", "P", "CMYK", "1")
MIN_SIDE = 64


def list_subject_images(folder: Union[str, Path]) -> List[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SubjectImageError(f"Subject folder {folder} does not exist. Pass --subject DIR with 3-6 photos of the subject.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS and p.suffix.lower() != ".txt"]
    if others:
        raise SubjectImageError(
            f"{others[0]} is not an image ({', '.join(IMAGE_EXTENSIONS)} accepted). "
            "Move it out of the subject folder."
        )
    if not images:
        raise SubjectImageError(f"Subject folder {folder} has no images. Put 3-6 photos of the subject (png/jpg/webp) in it.")
    return images


def load_image(path: Union[str, Path], resolution: Optional[int], min_side: int = MIN_SIDE):
    """Open one photo: EXIF orientation applied, alpha composited on white, centre crop, resize.

    ``resolution=None`` keeps the centre square at its native size (evaluation resizes per encoder).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            full_size = im.size
            if resolution is not None and im.format == "JPEG":
                # decode a 2048-px photo at 1/2, 1/4 or 1/8 scale straight from the DCT (the result stays
                # at least resolution x resolution, so the centre square is still resized down, never up)
                im.draft("RGB", (resolution, resolution))
            im.load()
            img = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise SubjectImageError(f"{path} cannot be read as an image ({e}). Re-export it as PNG or JPEG, or remove it.") from e
    if img.mode not in SUPPORTED_MODES:
        raise SubjectImageError(
            f"{path} has unsupported image mode {img.mode!r} (16-bit or float). Save it as 8-bit RGB or RGBA (PNG/JPEG)."
        )
    if min(full_size) < min_side:  # the photo's own size, not the reduced decode's
        raise SubjectImageError(
            f"{path} is {full_size[0]}x{full_size[1]} pixels; the shorter side must be at least {min_side}. "
            "Use a larger photo."
        )
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if resolution is None:
        return img
    return img.resize((resolution, resolution), Image.BICUBIC)


def to_tensor(img) -> torch.Tensor:
    """PIL RGB -> float tensor [3, H, W] in [-1, 1], the VAE's input range."""
    import numpy as np

    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return arr.permute(2, 0, 1).contiguous()


def load_images(paths: Sequence[Union[str, Path]], resolution: int, min_side: int = MIN_SIDE) -> torch.Tensor:
    """Photos as one [N, 3, R, R] tensor in [-1, 1]."""
    return torch.stack([to_tensor(load_image(p, resolution, min_side)) for p in paths])


def load_subject_images(
    folder: Union[str, Path], resolution: int, min_side: int = MIN_SIDE
) -> Tuple[torch.Tensor, List[Path]]:
    """All photos of a subject folder as one [N, 3, R, R] tensor in [-1, 1], plus their paths."""
    paths = list_subject_images(folder)
    return load_images(paths, resolution, min_side), paths


def read_captioned_folder(folder: Union[str, Path]) -> List[Tuple[Path, str]]:
    """Images each with a sidecar caption ``<stem>.txt`` (how pseudo-view sets store view prompts)."""
    items = []
    for p in list_subject_images(folder):
        cap = p.with_suffix(".txt")
        if not cap.is_file():
            raise SubjectImageError(f"{p} has no caption file {cap.name}. Write its prompt (e.g. 'a sks dog, back view') there.")
        items.append((p, cap.read_text().strip()))
    return items
