"""``dreambooth-mvdream-guidance``: MVDream-threestudio's ``multiview-diffusion-guidance`` on our
MVDream UNet (core :mod:`~..core.mvdream`) plus a (multi-view) DreamBooth checkpoint.

The same config keys and meanings as the original (``guidance_scale`` 50, ``n_view``,
``image_size``, ``recon_loss``, ``recon_std_rescale``, ``camera_condition_type``, the
``min/max_step_percent`` schedules as ``C()`` values, ``grad_clip``), plus ours:
``pretrained_model_name_or_path`` is a converted MVDream folder (``dreambooth3d
convert-mvdream``), ``checkpoint``/``checkpoint_name`` as in ``dreambooth-sds-guidance``.
The math is core :func:`~..core.mvsds.multiview_score_distillation`; the camera input is
core :func:`~..core.mvdream.mvdream_camera` of the batch's ``c2w``. Batches must hold whole
objects (``dreambooth-multiview-camera-datamodule``). One difference: one timestep per
object rather than one per batch (the same draw for a batch of one object).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

import threestudio
from threestudio.models.guidance.stable_diffusion_guidance import StableDiffusionGuidance
from threestudio.models.prompt_processors.base import PromptProcessorOutput
from threestudio.utils.base import BaseObject

from ..core import mvsds
from ..core.checkpoints import resolve_checkpoint
from ..errors import ConfigError

CAMERA_CONDITIONS = ("rotation",)


@threestudio.register("dreambooth-mvdream-guidance")
class DreamBoothMVDreamGuidance(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        pretrained_model_name_or_path: str = "???"  # a converted MVDream folder (unet/ vae/ ... scheduler/)
        checkpoint: Optional[str] = None  # checkpoint folder, or MVDreamBooth output + checkpoint_name
        checkpoint_name: Optional[str] = None
        guidance_scale: float = 50.0
        grad_clip: Optional[Any] = None  # C() value; the SDS variant only, as the original
        half_precision_weights: bool = True  # fp16 on CUDA; always fp32 on CPU
        min_step_percent: Any = 0.02  # C() values
        max_step_percent: Any = 0.98
        sqrt_anneal: bool = False  # threestudio's update_step reads it
        trainer_max_steps: int = 10000
        camera_condition_type: str = "rotation"
        view_dependent_prompting: bool = False
        n_view: int = 4
        image_size: Optional[int] = None  # renders are resized to this; None: the model's own (256 for MVDream)
        recon_loss: bool = True
        recon_std_rescale: float = 0.5

    cfg: Config

    set_min_max_steps = StableDiffusionGuidance.set_min_max_steps
    update_step = StableDiffusionGuidance.update_step

    def configure(self) -> None:
        from ..core.mvdream import is_mvdream_folder
        from ..core.sd_models import DENOISING_PARTS, load_sd_components, weights_dtype

        if self.cfg.camera_condition_type not in CAMERA_CONDITIONS:
            raise ConfigError(f"system.guidance.camera_condition_type={self.cfg.camera_condition_type!r}: "
                              f"expected one of {', '.join(CAMERA_CONDITIONS)}")
        if not is_mvdream_folder(self.cfg.pretrained_model_name_or_path):
            raise ConfigError(
                f"system.guidance.pretrained_model_name_or_path={self.cfg.pretrained_model_name_or_path} is not an "
                "MVDream model folder (its unet/ is not a MultiViewUNet): convert the released checkpoint with "
                "`dreambooth3d convert-mvdream CKPT --base SD21_FOLDER --out FOLDER` and point at FOLDER"
            )
        self.checkpoint_path = resolve_checkpoint(self.cfg.checkpoint, self.cfg.checkpoint_name)
        self.weights_dtype = weights_dtype(self.cfg.half_precision_weights, self.device)
        threestudio.info(f"Loading MVDream {self.cfg.pretrained_model_name_or_path} + {self.checkpoint_path} ...")
        # no text encoder: the prompt processor embeds
        self.components = load_sd_components(self.cfg.pretrained_model_name_or_path, checkpoint=self.checkpoint_path,
                                              device=self.device, dtype=self.weights_dtype, parts=DENOISING_PARTS)
        self.components.freeze()
        self.num_train_timesteps = self.components.scheduler.config.num_train_timesteps
        self.alphas = self.components.scheduler.alphas_cumprod.to(self.device)
        self.grad_clip_val: Optional[float] = None
        self.set_min_max_steps()
        threestudio.info("Loaded MVDream!")

    @property
    def image_size(self) -> int:
        return int(self.cfg.image_size or self.components.resolution)

    def _config(self) -> mvsds.MVSDSConfig:
        return mvsds.MVSDSConfig(guidance_scale=self.cfg.guidance_scale, n_view=self.cfg.n_view,
                                 recon_loss=self.cfg.recon_loss, recon_std_rescale=self.cfg.recon_std_rescale,
                                 grad_clip=self.grad_clip_val)

    def __call__(
        self,
        rgb: torch.Tensor,
        prompt_utils: PromptProcessorOutput,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        c2w: Optional[torch.Tensor] = None,
        rgb_as_latents: bool = False,
        **kwargs,
    ) -> Dict[str, Any]:
        """threestudio's guidance call on a multi-view batch: ``rgb`` [B, H, W, 3], ``c2w`` [B, 4, 4]
        (B a multiple of ``n_view``, views of one object together) -> ``loss_sds``, ``grad_norm``."""
        from ..core.mvdream import mvdream_camera

        text_embeddings = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances,
                                                           self.cfg.view_dependent_prompting)
        camera = mvdream_camera(c2w) if c2w is not None else None
        out = mvsds.multiview_score_distillation(
            self.components.unet, self.components.vae, rgb, text_embeddings, camera, self.alphas,
            (self.min_step, self.max_step), self._config(), image_size=self.image_size, rgb_as_latents=rgb_as_latents,
            prediction_type=self.components.prediction_type,
        )
        return {"loss_sds": out["loss_sds"], "grad_norm": out["grad_norm"],
                "min_step": self.min_step, "max_step": self.max_step}
