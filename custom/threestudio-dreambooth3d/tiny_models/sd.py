"""Tiny random Stable Diffusion in diffusers layout, built offline.

Tests, benchmarks and the CPU smoke preset save it with ``save_pretrained`` and load
it back by path through the same code users hit with a hub id, as diffusers' own
tests do with ``get_dummy_components()``. Nothing here touches the network.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Union

import torch

# Words given a single BPE token so prompts tokenize to a handful of ids.
_WORDS = ["a", "sks", "dog", "cat", "backpack", "toy", "photo", "of", "the", "view",
          "front", "side", "back", "overhead", "bottom", "wearing", "hat", "purple", "red"]


def _bytes_to_unicode() -> Dict[int, str]:
    # CLIP's reversible byte -> printable-unicode table (same as GPT-2's).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tiny_clip_tokenizer(folder: Union[str, Path]) -> Path:
    """Write vocab.json/merges.txt for a small byte-level CLIP BPE tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = []
    for word in _WORDS:
        # merge left to right: "s k" -> "sk", "sk s</w>" -> "sks</w>"
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            merged = parts[0] + parts[1]
            if merged not in vocab_list:
                vocab_list.append(merged)
            parts = [merged] + parts[2:]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = list(dict.fromkeys(merges))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def get_dummy_components(seed: int = 0, sample_size: int = 16, hidden_size: int = 32) -> Dict[str, object]:
    """The components of a tiny StableDiffusionPipeline, deterministic for a seed.

    Image resolution is ``sample_size * 2`` (the VAE downsamples by 2, SD's by 8).
    """
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden_size,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size * 2,
    )
    calibrate_vae(vae, seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(tmp), model_max_length=77)
    torch.manual_seed(seed + 2)
    text_encoder = _clip_text_encoder(tokenizer, vocab_size=len(tokenizer), hidden_size=hidden_size,
                                      intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": _sd_scheduler()}


def _clip_text_encoder(tokenizer, **sizes):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    ))


def _sd_scheduler():
    """Stable Diffusion's training noise schedule (scaled linear betas, epsilon prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, steps_offset=1, prediction_type="epsilon")


@torch.no_grad()
def calibrate_vae(vae, seed: int = 0) -> None:
    """Give a random VAE the two properties of SD's VAE that SDS and SDEdit rely on.

    SD's posterior is near-deterministic and its ``scaling_factor`` (0.18215) gives
    latents unit variance. A random VAE has neither: posterior noise drowns the image
    and its scaled latents have std ~0.05, so any diffusion noise erases the input and
    img2img, SDS and DreamBooth on the tiny model would all act on noise.
    """
    vae.quant_conv.weight[vae.config.latent_channels :] = 0
    vae.quant_conv.bias[vae.config.latent_channels :] = -30.0  # log-variance -> std 3e-7
    size = vae.config.sample_size
    probe = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    raw = vae.encode(probe).latent_dist.mode()
    vae.register_to_config(scaling_factor=1.0 / raw.std().item())


def save_tiny_sd(folder: Union[str, Path], seed: int = 0, **kwargs) -> Path:
    """Save a tiny SD pipeline folder (model_index.json + subfolders) and return its path.

    Reuses an existing folder so repeated calls (tests, smoke runs) cost nothing.
    """
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    return _save_pipeline(get_dummy_components(seed=seed, **kwargs), folder)


def _save_pipeline(components: Dict[str, object], folder: Path) -> Path:
    # written next to the target and renamed, so an interrupted save never looks complete
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = folder.with_name(folder.name + ".tmp")
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)
    return folder


def sd21_base_components(seed: int = 0) -> Dict[str, object]:
    """Stable Diffusion 2.1-base components with random weights (UNet, VAE, OpenCLIP-H-sized text
    encoder, the tiny tokenizer, SD's scheduler). Built under ``torch.device("meta")`` they cost no
    memory: the memory estimates count their parameters that way."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(tmp), model_max_length=77)
    torch.manual_seed(seed + 2)
    text_encoder = _clip_text_encoder(tokenizer, vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                                      num_attention_heads=16, num_hidden_layers=23, hidden_act="gelu",
                                      projection_dim=512)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": _sd_scheduler()}


def save_sd21_base_random(folder: Union[str, Path], seed: int = 0) -> Path:
    """Stable Diffusion 2.1-base shapes with random weights, saved like :func:`save_tiny_sd`.

    Same configs as ``stabilityai/stable-diffusion-2-1-base`` (UNet, VAE, OpenCLIP-H
    text encoder, epsilon prediction at 512 px) so benchmarks measure real time and
    memory without downloading weights. Only the tokenizer is the tiny one: token ids
    stay below SD's 49408-entry vocabulary, so the embedding table keeps its real size.
    About 5 GB on disk (fp32); an existing folder is reused.
    """
    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    return _save_pipeline(sd21_base_components(seed), folder)


def save_random_lora_checkpoint(model: Union[str, Path], folder: Union[str, Path], rank: int, std: float,
                                seed: int = 0) -> Path:
    """A DreamBooth checkpoint (``mode: lora``) of ``model`` with rank-``rank`` LoRA on every trained module
    (UNet and text encoder), ``lora_B`` drawn from N(0, std) so the adapters change outputs."""
    from ..core import checkpoints, lora
    from ..core.sd_models import load_sd_components

    comps = load_sd_components(str(model))
    torch.manual_seed(seed)
    for name in checkpoints.MODULES:
        module = getattr(comps, name)
        lora.add_lora(module, rank, rank, checkpoints.LORA_TARGETS[name])
        with torch.no_grad():
            for n, p in module.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, std)
    return checkpoints.save_checkpoint(Path(folder), {n: (getattr(comps, n), False) for n in checkpoints.MODULES},
                                       {"mode": "lora", "base_model": str(model)})


def make_subject_images(folder: Union[str, Path], n: int = 4, size: int = 64,
                        color=(220, 30, 30), background=(255, 255, 255), seed: int = 0,
                        ext: str = "png") -> Path:
    """Synthetic 'subject' photos: a coloured disc at a jittered place on a plain background."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        cx, cy = size / 2 + rng.uniform(-size / 10, size / 10, 2)
        r = size * rng.uniform(0.3, 0.38)
        img = np.empty((size, size, 3), np.uint8)
        img[:] = background
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = color
        Image.fromarray(img).save(folder / f"subject_{i:02d}.{ext}")
    return folder
