"""Loading Stable Diffusion components from a hub id or a local diffusers folder.

One loader for the trainer, the SDS guidance, img2img translation and evaluation, so
every stage sees the same base model plus the same DreamBooth weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from ..errors import ModelNotFoundError
from .model_folder import model_folder_problem


def pretrained_kwargs(source: Union[str, Path]) -> dict:
    """``from_pretrained`` keywords for ``source``: a path that exists loads offline (never
    reaching for the hub with a local folder's name); anything else is a hub id."""
    return {"local_files_only": True} if Path(source).exists() else {}


def _file_stamp(files) -> str:
    """A cheap identity of files: path, size and modification time (a rebuilt or replaced file changes it)."""
    import hashlib

    parts = [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(files) if f.is_file()]
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


def text_encoder_key(model: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None) -> str:
    """What prompt embeddings depend on, for a cache key: the base model (for a local folder, its
    text-encoder and tokenizer files, so a folder rebuilt or replaced in place is not mistaken for
    the old one) plus the checkpoint's text-encoder weights if it trained one."""
    from .checkpoints import module_files

    key = str(model)
    folder = Path(model)
    if folder.is_dir():
        files = [p for sub in ("text_encoder", "tokenizer") for p in (folder / sub).glob("*") if p.is_file()]
        key += f"@{_file_stamp(files)}"
    te_files = [] if checkpoint is None else module_files(checkpoint, "text_encoder")
    if te_files:
        key += f"+dreambooth-text-encoder-{_file_stamp(te_files)}"
    return key


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``device`` as given, else the GPU when there is one."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@dataclass
class SDComponents:
    tokenizer: Optional[object]
    text_encoder: Optional[torch.nn.Module]
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object  # the training (DDPM) noise scheduler of the model folder
    source: str

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Native image resolution: 512 for SD 1.x/2.x base, 32 for the tiny test model."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.get("prediction_type", "epsilon")

    def modules(self):
        # the SDS guidance frees the text encoder when it only needs UNet and VAE
        return [m for m in (self.text_encoder, self.unet, self.vae) if m is not None]

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "SDComponents":
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    def freeze(self) -> "SDComponents":
        for m in self.modules():
            m.requires_grad_(False).eval()
        return self

    def free_text_encoder(self) -> "SDComponents":
        """Drop the text encoder and tokenizer (SDS gets its embeddings from the prompt processor)."""
        self.text_encoder = None
        self.tokenizer = None
        return self

    def tokenize(self, prompts, device=None) -> torch.Tensor:
        """Token ids [B, 77], padded as Stable Diffusion was trained."""
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device or self.text_encoder.device)

    @torch.no_grad()
    def encode_prompts(self, prompts, device=None) -> torch.Tensor:
        """CLIP last hidden states [B, 77, D], as Stable Diffusion conditions on."""
        return self.text_encoder(self.tokenize(prompts, device))[0]


def load_sd_components(
    model: Union[str, Path],
    checkpoint: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
    merge_lora: bool = True,
) -> SDComponents:
    """Load tokenizer, text encoder, UNet, VAE and noise scheduler of ``model``.

    ``model`` is a hub id (e.g. ``stabilityai/stable-diffusion-2-1-base``) or a local
    diffusers folder. ``checkpoint`` is a DreamBooth checkpoint folder written by our
    trainer; its weights are applied on top of the base (LoRA merged by default so
    inference costs the same as the stock model).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = str(model)
    kw = pretrained_kwargs(model)
    problem = model_folder_problem(model) if kw else None
    if problem:
        raise ModelNotFoundError(
            f"{problem}. Pass a folder saved with StableDiffusionPipeline.save_pretrained or a hub id "
            "such as stabilityai/stable-diffusion-2-1-base."
        )
    unet_cls = UNet2DConditionModel
    if kw:
        from .mvdream import MultiViewUNet, is_mvdream_folder

        unet_cls = MultiViewUNet if is_mvdream_folder(model) else unet_cls  # MVDream: same folders, its UNet
    comps = SDComponents(
        tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw),
        text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype, **kw),
        unet=unet_cls.from_pretrained(model, subfolder="unet", torch_dtype=dtype, **kw),
        vae=AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype, **kw),
        scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler", **kw),
        source=model,
    )
    if checkpoint is not None:
        from .checkpoints import apply_checkpoint

        apply_checkpoint(comps, checkpoint, merge_lora=merge_lora)
    if device is not None:
        comps.to(device)
    return comps


def load_mvdream_components(source: Union[str, Path], device: Optional[Union[str, torch.device]] = None,
                            dtype: torch.dtype = torch.float32, merge_lora: bool = True) -> SDComponents:
    """:class:`SDComponents` of a converted MVDream folder or of a DreamBooth
    checkpoint trained on one (its ``base_model`` is the folder)."""
    from . import checkpoints
    from .mvdream import UNET_CLASS_NAME, is_mvdream_folder

    source = Path(source)
    checkpoint = None
    if checkpoints.is_checkpoint(source):
        checkpoint, source = source, Path(checkpoints.read_meta(source)["base_model"])
    if not is_mvdream_folder(source):
        raise ModelNotFoundError(
            f"{source} is not an MVDream model folder (unet/config.json does not name {UNET_CLASS_NAME}). "
            "Convert the released checkpoint first: dreambooth3d convert-mvdream sd-v2.1-base-4view.pt "
            "--base stabilityai/stable-diffusion-2-1-base --out FOLDER")
    return load_sd_components(source, checkpoint=checkpoint, device=device, dtype=dtype, merge_lora=merge_lora)


def load_mvdream_unet(source: Union[str, Path], device: Optional[Union[str, torch.device]] = None,
                      dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The (personalised) multi-view UNet of a converted folder or a DreamBooth checkpoint,
    LoRA merged, frozen, in eval mode: what the multi-view SDS guidance calls."""
    comps = load_mvdream_components(source, device=device, dtype=dtype)
    return comps.unet.requires_grad_(False).eval()
