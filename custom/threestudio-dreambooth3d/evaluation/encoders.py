"""CLIP and DINO encoders from a hub id or a local folder, giving L2-normalised embeddings.

Images are preprocessed by transformers' own image processor of the model, always its PIL
backend (see ``_pil_backend_kwargs``): the same numbers with or without torchvision.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Sequence, Union

import torch

from ..core.sd_models import pretrained_kwargs, resolve_device
from ..errors import ModelLoadError
from .metrics import l2_normalize

Source = Union[str, Path]


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


def _from_pretrained(what: str, source: Source, load: Callable[[dict], Any]) -> Any:
    """``load(from_pretrained keywords for source)``; a failure is a :class:`ModelLoadError` saying how to fix it."""
    try:
        return load(pretrained_kwargs(source))
    except (OSError, ValueError) as e:
        raise _load_error(what, source, e) from e


def _ready(model: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """Frozen, in eval mode, on ``device`` in ``dtype``."""
    return model.to(resolve_device(device), dtype).eval().requires_grad_(False)


def _pil_backend_kwargs() -> dict:
    """The keyword that asks transformers for its PIL image processor.

    transformers picks a torchvision backend when torchvision is installed (as it is with
    threestudio's requirements) and a PIL one otherwise; the two resize slightly
    differently. Asking for PIL every time gives the same numbers on every machine and
    needs no torchvision. transformers 5 spells it ``backend="pil"``; 4.x ``use_fast=False``.
    """
    import transformers

    return {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}


def load_image_processor(source: Source):
    """transformers' own (PIL-backend) image processor of ``source``: resize, crop, normalise."""
    from transformers import AutoImageProcessor

    return _from_pretrained("image processor", source,
                            lambda kw: AutoImageProcessor.from_pretrained(str(source), **kw, **_pil_backend_kwargs()))


def preprocess_images(processor, images: Sequence) -> torch.Tensor:
    """PIL images (any size/mode) -> float tensor [N, 3, H, W] via ``processor``."""
    rgb = [img.convert("RGB") for img in images]
    return processor(images=rgb, return_tensors="pt")["pixel_values"]


class _ImageEncoder:
    model: torch.nn.Module
    processor: object  # a transformers image processor, PIL backend (load_image_processor)
    device: torch.device

    def preprocess(self, images: Sequence) -> torch.Tensor:
        return preprocess_images(self.processor, images)

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

    def __init__(self, model, tokenizer, processor, source: str):
        self.model, self.tokenizer, self.processor, self.source = model, tokenizer, processor, source
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, source: Source, device=None, dtype: torch.dtype = torch.float32) -> "ClipEncoder":
        from transformers import AutoTokenizer, CLIPModel

        model, tokenizer = _from_pretrained("CLIP model", source, lambda kw: (
            CLIPModel.from_pretrained(str(source), **kw), AutoTokenizer.from_pretrained(str(source), **kw)))
        return cls(_ready(model, device, dtype), tokenizer, load_image_processor(source), str(source))

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

    def __init__(self, model, processor, source: str):
        self.model, self.processor, self.source = model, processor, source
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, source: Source, device=None, dtype: torch.dtype = torch.float32) -> "DinoEncoder":
        from transformers import AutoConfig, AutoModel

        def load(kw: dict):
            config = AutoConfig.from_pretrained(str(source), **kw)
            # DINO checkpoints have no trained pooler; ViTModel would add a random one
            extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
            return AutoModel.from_pretrained(str(source), **extra, **kw)

        model = _from_pretrained("DINO model", source, load)
        return cls(_ready(model, device, dtype), load_image_processor(source), str(source))

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]


def load_image_encoder(source: Source, device=None) -> _ImageEncoder:
    """A CLIP (its image tower) or a DINO/DINOv2 encoder, by the folder's or hub id's model type:
    what CLIP-I and DINO use, for anything that compares pictures with the subject photos."""
    from transformers import AutoConfig

    config = _from_pretrained("image encoder", source, lambda kw: AutoConfig.from_pretrained(str(source), **kw))
    loader = ClipEncoder if config.model_type == "clip" else DinoEncoder
    return loader.load(source, device=device)
