"""Loading Stable Diffusion components from a hub id or a local diffusers folder.

One loader for the trainer, the SDS guidance, img2img translation and evaluation, so
every stage sees the same base model plus the same DreamBooth weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

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
    # a component not loaded (load_sd_components' ``parts``) is None
    tokenizer: Optional[object]
    text_encoder: Optional[torch.nn.Module]
    unet: Optional[torch.nn.Module]
    vae: Optional[torch.nn.Module]
    scheduler: Optional[object]  # the training (DDPM) noise scheduler of the model folder
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
        # the loaded ones: the prompt processor loads no UNet, the SDS guidance no text encoder
        return [m for m in (self.text_encoder, self.unet, self.vae) if m is not None]

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "SDComponents":
        for m in self.modules():
            m.to(device=device, dtype=dtype)
        return self

    def freeze(self) -> "SDComponents":
        for m in self.modules():
            m.requires_grad_(False).eval()
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


# what each user of a model needs: the prompt processor embeds prompts, SDS denoises latents
PARTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
TEXT_PARTS = ("tokenizer", "text_encoder")
DENOISING_PARTS = ("unet", "vae", "scheduler")


def _check_model_folder(model: str, kw: dict) -> None:
    problem = model_folder_problem(model) if kw else None
    if problem:
        raise ModelNotFoundError(
            f"{problem}. Pass a folder saved with StableDiffusionPipeline.save_pretrained or a hub id "
            "such as stabilityai/stable-diffusion-2-1-base."
        )


def load_sd_component(model: Union[str, Path], name: str, dtype: torch.dtype = torch.float32):
    """One component (``tokenizer``, ``text_encoder``, ``unet``, ``vae`` or ``scheduler``) of a hub id
    or local diffusers folder, and nothing else of it."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = str(model)
    kw = pretrained_kwargs(model)
    _check_model_folder(model, kw)
    if name == "tokenizer":
        return CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
    if name == "scheduler":
        return DDPMScheduler.from_pretrained(model, subfolder="scheduler", **kw)
    if name == "unet":
        unet_cls = UNet2DConditionModel
        if kw:
            from .mvdream import MultiViewUNet, is_mvdream_folder

            unet_cls = MultiViewUNet if is_mvdream_folder(model) else unet_cls  # MVDream: same folders, its UNet
        return unet_cls.from_pretrained(model, subfolder="unet", torch_dtype=dtype, **kw)
    classes = {"text_encoder": CLIPTextModel, "vae": AutoencoderKL}
    if name not in classes:
        raise ValueError(f"unknown Stable Diffusion component {name!r}; one of {', '.join(PARTS)}")
    return classes[name].from_pretrained(model, subfolder=name, torch_dtype=dtype, **kw)


def load_sd_components(
    model: Union[str, Path],
    checkpoint: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
    merge_lora: bool = True,
    parts: Sequence[str] = PARTS,
) -> SDComponents:
    """Load ``parts`` (default: tokenizer, text encoder, UNet, VAE and noise scheduler) of ``model``;
    the others are None.

    ``model`` is a hub id (e.g. ``stabilityai/stable-diffusion-2-1-base``) or a local
    diffusers folder. ``checkpoint`` is a DreamBooth checkpoint folder written by our
    trainer; its weights are applied on top of the base to the loaded modules only (LoRA
    merged by default so inference costs the same as the stock model). The prompt
    processor loads :data:`TEXT_PARTS`, the SDS guidance :data:`DENOISING_PARTS`: an SD-2.1
    text encoder is 1.4 GB in fp32, the UNet 3.5 GB.
    """
    model = str(model)
    _check_model_folder(model, pretrained_kwargs(model))
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown Stable Diffusion components {unknown}; choose from {', '.join(PARTS)}")
    comps = SDComponents(**{name: load_sd_component(model, name, dtype) if name in parts else None for name in PARTS},
                         source=model)
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


@torch.no_grad()
def embed_prompts(model: Union[str, Path], checkpoint: Optional[Path], prompts: List[str], device) -> torch.Tensor:
    """CLIP hidden states [N, 77, D] from the checkpoint's (or the base's) text encoder."""
    # tokenizer + text encoder only, with only the checkpoint's text-encoder weights (no UNet, VAE or LoRA merge)
    comps = load_sd_components(model, checkpoint=checkpoint, parts=TEXT_PARTS)
    comps.text_encoder.to(device).eval()
    return comps.encode_prompts(prompts, device=device)


def weights_dtype(half_precision: bool, device: Union[str, torch.device]) -> torch.dtype:
    """fp16 weights on CUDA when asked (threestudio's ``half_precision_weights``); fp32 on a CPU,
    whose fp16 kernels are slow or missing."""
    return torch.float16 if half_precision and torch.device(device).type == "cuda" else torch.float32
