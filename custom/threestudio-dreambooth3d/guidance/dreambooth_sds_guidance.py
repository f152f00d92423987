"""``dreambooth-sds-guidance``: threestudio's ``stable-diffusion-guidance`` on base SD plus a
DreamBooth checkpoint, and the img2img (SDEdit) translation stage 2 needs.

Config fields keep the meaning they have in threestudio's guidance; the t-range
schedule (``min/max_step_percent`` as ``C()`` values, ``sqrt_anneal``) and ``grad_clip``
run through threestudio's own ``update_step``. The SDS math is the core's
:func:`sds.score_distillation`, the translation the core's :func:`img2img.translate`;
this class only loads the model once and adapts threestudio's calling convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

import threestudio
from threestudio.models.guidance.stable_diffusion_guidance import StableDiffusionGuidance
from threestudio.models.prompt_processors.base import PromptProcessorOutput
from threestudio.utils.base import BaseObject

from ..core import sds
from ..core.checkpoints import is_checkpoint, read_meta


def resolve_checkpoint(checkpoint: Optional[str], name: Optional[str] = None) -> Optional[Path]:
    """The DreamBooth checkpoint folder a config names, or None for the plain base model.

    ``checkpoint`` is either a checkpoint folder (``.../checkpoints/full``) or a
    finetuning output folder, in which case ``name`` (``partial``, ``full``,
    ``multiview``...) picks ``checkpoint/checkpoints/<name>``.
    """
    if not checkpoint:
        return None
    path = Path(checkpoint)
    if is_checkpoint(path):
        return path
    for candidate in ([path / "checkpoints" / name, path / name] if name else []):
        if is_checkpoint(candidate):
            return candidate
    found = sorted(p.name for p in (path / "checkpoints").glob("*") if is_checkpoint(p)) if path.is_dir() else []
    raise FileNotFoundError(
        f"No DreamBooth checkpoint at {path}" + (f" named {name!r}" if name else "") + ". Set "
        "system.guidance.checkpoint to a checkpoint folder (holding dreambooth.json) or to a finetuning "
        "output folder plus system.guidance.checkpoint_name"
        + (f" (available: {', '.join(found)})" if found else "") + "."
    )


@threestudio.register("dreambooth-sds-guidance")
class DreamBoothSDSGuidance(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        checkpoint: Optional[str] = None  # checkpoint folder, or finetuning output + checkpoint_name
        checkpoint_name: Optional[str] = None  # partial | full | multiview | ...
        half_precision_weights: bool = True  # fp16 on CUDA; always fp32 on CPU
        enable_memory_efficient_attention: bool = False  # accepted for config compatibility: torch 2 SDPA is on
        enable_attention_slicing: bool = False
        enable_channels_last_format: bool = False

        guidance_scale: float = 100.0
        grad_clip: Optional[Any] = None  # C() value, as in threestudio
        min_step_percent: Any = 0.02  # C() values
        max_step_percent: Any = 0.98
        sqrt_anneal: bool = False
        trainer_max_steps: int = 25000
        weighting_strategy: str = "sds"
        view_dependent_prompting: bool = True

        # img2img (SDEdit) translation of renders, used by stage 2
        translation_strength: float = 0.5
        translation_guidance_scale: float = 7.5
        translation_steps: int = 50
        translation_batch_size: int = 4

    cfg: Config

    # threestudio's own t-range schedule and grad-clip schedule, shared rather than copied
    set_min_max_steps = StableDiffusionGuidance.set_min_max_steps
    update_step = StableDiffusionGuidance.update_step

    def configure(self) -> None:
        from ..core.sd_models import load_sd_components

        self.checkpoint_path = resolve_checkpoint(self.cfg.checkpoint, self.cfg.checkpoint_name)
        if self.checkpoint_path is not None:
            base = read_meta(self.checkpoint_path).get("base_model")
            if base and str(base) != str(self.cfg.pretrained_model_name_or_path):
                threestudio.warn(
                    f"DreamBooth checkpoint {self.checkpoint_path} was trained on {base}, "
                    f"guidance loads {self.cfg.pretrained_model_name_or_path}"
                )
        dtype = torch.float16 if self.cfg.half_precision_weights and self.device.type == "cuda" else torch.float32
        threestudio.info(f"Loading Stable Diffusion {self.cfg.pretrained_model_name_or_path} + {self.checkpoint_path} ...")
        self.components = load_sd_components(
            self.cfg.pretrained_model_name_or_path, checkpoint=self.checkpoint_path, device=self.device, dtype=dtype
        ).freeze()
        if self.cfg.enable_attention_slicing:
            self.components.unet.set_attention_slice(1)
        if self.cfg.enable_channels_last_format:
            self.components.unet.to(memory_format=torch.channels_last)
        self.num_train_timesteps = self.components.scheduler.config.num_train_timesteps
        self.grad_clip_val: Optional[float] = None
        self.set_min_max_steps()
        threestudio.info("Loaded Stable Diffusion!")

    @property
    def unet(self):
        return self.components.unet

    @property
    def vae(self):
        return self.components.vae

    def _sds_config(self) -> sds.SDSConfig:
        T = self.num_train_timesteps
        return sds.SDSConfig(
            guidance_scale=self.cfg.guidance_scale,
            min_step_percent=self.min_step / T,
            max_step_percent=self.max_step / T,
            weighting_strategy=self.cfg.weighting_strategy,
            grad_clip=self.grad_clip_val,
        )

    def __call__(
        self,
        rgb: torch.Tensor,
        prompt_utils: PromptProcessorOutput,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        **kwargs,
    ) -> Dict[str, Any]:
        """threestudio's guidance call: ``rgb`` [B, H, W, 3] in [0, 1] -> ``loss_sds`` and logs."""
        if guidance_eval and not getattr(self, "_warned_eval", False):
            self._warned_eval = True
            threestudio.warn("dreambooth-sds-guidance does not produce guidance_eval images; ignoring guidance_eval")
        if prompt_utils.use_perp_neg:
            raise NotImplementedError("dreambooth-sds-guidance does not implement Perp-Neg; set prompt_processor.use_perp_neg=false")
        batch_size = rgb.shape[0]
        text_embeddings = prompt_utils.get_text_embeddings(
            elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
        )
        t = sds.sample_timesteps(batch_size, self.min_step, self.max_step, device=rgb.device)
        out = sds.score_distillation(self.components, rgb, text_embeddings, self._sds_config(), rgb_as_latents=rgb_as_latents, t=t)
        return {
            "loss_sds": out["loss_sds"],
            "grad_norm": out["grad_norm"],
            "min_step": self.min_step,
            "max_step": self.max_step,
        }

    @torch.no_grad()
    def translate(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        strength: Optional[float] = None,
        guidance_scale: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        seed: int = 0,
    ) -> torch.Tensor:
        """img2img (SDEdit) of renders [N, 3, H, W] in [0, 1] with one prompt each, in batches."""
        from ..core import img2img

        return img2img.translate(
            self.components,
            images,
            list(prompts),
            strength=self.cfg.translation_strength if strength is None else strength,
            guidance_scale=self.cfg.translation_guidance_scale if guidance_scale is None else guidance_scale,
            num_inference_steps=num_inference_steps or self.cfg.translation_steps,
            batch_size=self.cfg.translation_batch_size,
            seed=seed,
        )
