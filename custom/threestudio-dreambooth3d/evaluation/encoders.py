"""CLIP and DINO encoders from a hub id or a local folder, giving L2-normalised embeddings.

Preprocessing is done here with PIL + torch from the settings in the model's
``preprocessor_config.json`` (resize, centre crop, rescale, normalise), rather than by
calling the transformers image processor: transformers 5 picks a torchvision or a PIL
backend depending on what is installed, and the two resize slightly differently. Doing
it ourselves gives the same numbers on every machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch

from ..core.sd_models import resolve_device
from .metrics import l2_normalize

Source = Union[str, Path]


def _load_kwargs(source: Source) -> dict:
    """A path that exists is loaded offline; anything else is a hub id."""
    return {"local_files_only": True} if Path(source).exists() else {}


class ModelLoadError(RuntimeError):
    """A model or its processor could not be loaded; the message says from where and how to fix it."""


def _load_error(what: str, source: Source, err: Exception) -> ModelLoadError:
    where = (
        f"the folder holds no {what} saved with save_pretrained"
        if Path(source).exists()
        else "it is neither an existing folder nor a hub id reachable (or cached) from here"
    )
    return ModelLoadError(
        f"Could not load the {what} from {source}: {where} ({type(err).__name__}: {err}). Pass a "
        "local folder saved with save_pretrained, or a hub id with network access or an HF cache that has it."
    )


def _size_pair(size) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    """(height, width, shortest_edge) from a transformers size dict or SizeDict."""
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    return get("height"), get("width"), get("shortest_edge")


@dataclass
class ImagePreprocess:
    """Resize (to a fixed size or shortest edge), optional centre crop, normalise."""

    resize_hw: Optional[Tuple[int, int]] = None  # exact (height, width)
    shortest_edge: Optional[int] = None  # or: scale so the short side has this length
    crop_hw: Optional[Tuple[int, int]] = None
    resample: int = 3  # PIL's BICUBIC, CLIP's choice
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_pretrained(cls, source: Source) -> "ImagePreprocess":
        """Read the settings of ``source``'s image processor.

        The processor class is loaded (not used) because it alone knows what a legacy
        integer ``size`` means: the shortest edge for CLIP and DINOv2, a square for ViT.
        """
        import transformers
        from transformers import AutoImageProcessor

        kw = _load_kwargs(source)
        if int(transformers.__version__.split(".")[0]) >= 5:
            kw["backend"] = "pil"  # needs no torchvision; only its settings are read
        try:
            proc = AutoImageProcessor.from_pretrained(str(source), **kw)
        except (OSError, ValueError) as e:
            raise _load_error("image processor", source, e) from e
        h, w, short = _size_pair(proc.size) if getattr(proc, "do_resize", True) else (None, None, None)
        crop = None
        if getattr(proc, "do_center_crop", False) and getattr(proc, "crop_size", None) is not None:
            ch, cw, _ = _size_pair(proc.crop_size)
            crop = (int(ch), int(cw))
        normalize = getattr(proc, "do_normalize", True)
        return cls(
            resize_hw=(int(h), int(w)) if h and w else None,
            shortest_edge=int(short) if short else None,
            crop_hw=crop,
            resample=int(getattr(proc, "resample", 3)),
            mean=tuple(proc.image_mean) if normalize else (0.0, 0.0, 0.0),
            std=tuple(proc.image_std) if normalize else (1.0, 1.0, 1.0),
        )

    def _resize(self, img):
        if self.resize_hw is not None:
            return img.resize((self.resize_hw[1], self.resize_hw[0]), resample=self.resample)
        if self.shortest_edge is not None:
            w, h = img.size
            scale = self.shortest_edge / min(w, h)
            # transformers rounds the long side down (int), as we do
            size = (self.shortest_edge, int(h * scale)) if w <= h else (int(w * scale), self.shortest_edge)
            return img.resize(size, resample=self.resample)
        return img

    def _center_crop(self, img):
        if self.crop_hw is None:
            return img
        ch, cw = self.crop_hw
        w, h = img.size
        left, top = (w - cw) // 2, (h - ch) // 2
        return img.crop((left, top, left + cw, top + ch))  # pads with black if smaller, as transformers

    def __call__(self, images: Sequence) -> torch.Tensor:
        """PIL images (any size/mode) -> float tensor [N, 3, H, W]."""
        import numpy as np

        arrays = [
            np.asarray(self._center_crop(self._resize(img.convert("RGB"))), dtype=np.float32) / 255.0
            for img in images
        ]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"preprocessing gave images of different sizes {sorted(shapes)}; the model needs a crop size")
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


class _ImageEncoder:
    model: torch.nn.Module
    preprocess: ImagePreprocess
    device: torch.device

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def embed_images(self, images: Sequence, batch_size: int = 32) -> torch.Tensor:
        """PIL images -> [N, D] L2-normalised float32 embeddings on the CPU."""
        dtype = next(self.model.parameters()).dtype
        out: List[torch.Tensor] = []
        for i in range(0, len(images), batch_size):
            px = self.preprocess(images[i : i + batch_size]).to(self.device, dtype)
            out.append(l2_normalize(self._image_features(px)).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)


class ClipEncoder(_ImageEncoder):
    """CLIP image and text towers with their projections: embeddings in the joint space."""

    def __init__(self, model, tokenizer, preprocess: ImagePreprocess, source: str):
        self.model, self.tokenizer, self.preprocess, self.source = model, tokenizer, preprocess, source
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, source: Source, device=None, dtype: torch.dtype = torch.float32) -> "ClipEncoder":
        from transformers import AutoTokenizer, CLIPModel

        kw = _load_kwargs(source)
        try:
            model = CLIPModel.from_pretrained(str(source), **kw)
            tokenizer = AutoTokenizer.from_pretrained(str(source), **kw)
        except (OSError, ValueError) as e:
            raise _load_error("CLIP model", source, e) from e
        model.to(resolve_device(device), dtype).eval().requires_grad_(False)
        return cls(model, tokenizer, ImagePreprocess.from_pretrained(source), str(source))

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # vision_model + visual_projection spelled out: get_image_features returns a
        # tensor in transformers 4 and a ModelOutput in 5.
        pooled = self.model.vision_model(pixel_values=pixel_values).pooler_output
        return self.model.visual_projection(pooled)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Prompts -> [P, D] L2-normalised float32 embeddings on the CPU."""
        max_len = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        out: List[torch.Tensor] = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(
                list(texts[i : i + batch_size]), padding="max_length", max_length=max_len,
                truncation=True, return_tensors="pt",
            ).to(self.device)
            pooled = self.model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
            out.append(l2_normalize(self.model.text_projection(pooled)).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)


class DinoEncoder(_ImageEncoder):
    """A self-supervised ViT (DINO ViTModel or DINOv2 Dinov2Model): the final CLS token."""

    def __init__(self, model, preprocess: ImagePreprocess, source: str):
        self.model, self.preprocess, self.source = model, preprocess, source
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, source: Source, device=None, dtype: torch.dtype = torch.float32) -> "DinoEncoder":
        from transformers import AutoConfig, AutoModel

        kw = _load_kwargs(source)
        try:
            config = AutoConfig.from_pretrained(str(source), **kw)
            # DINO checkpoints have no trained pooler; ViTModel would add a random one
            extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
            model = AutoModel.from_pretrained(str(source), **extra, **kw)
        except (OSError, ValueError) as e:
            raise _load_error("DINO model", source, e) from e
        model.to(resolve_device(device), dtype).eval().requires_grad_(False)
        return cls(model, ImagePreprocess.from_pretrained(source), str(source))

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]
