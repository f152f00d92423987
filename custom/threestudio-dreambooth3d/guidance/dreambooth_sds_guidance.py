"""``dreambooth-sds-guidance``: threestudio's ``stable-diffusion-guidance`` on base SD plus a
DreamBooth checkpoint, and the img2img (SDEdit) translation stage 2 needs.

A superset of threestudio's guidance: every key of its Config is accepted with the
same meaning (Perp-Neg from the prompt processor, HiFA's ``use_img_loss``, SJC,
``guidance_eval`` images, token merging, sequential CPU offload); the t-range schedule
(``min/max_step_percent`` as ``C()`` values, ``sqrt_anneal``) and ``grad_clip`` run
through threestudio's own ``update_step``. The math is the core's
:func:`sds.score_distillation` / :func:`guidance_eval.guidance_eval`, the translation the core's
:func:`img2img.translate`; this class only loads the model once and adapts
threestudio's calling convention. One deliberate difference: renders are resized to
the model's own resolution (threestudio hard-codes 512 px / 64 latents), the same for
SD 1.x/2.x base and right for 768 px models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import torch

import threestudio
from threestudio.models.guidance.stable_diffusion_guidance import StableDiffusionGuidance
from threestudio.models.prompt_processors.base import PromptProcessorOutput
from threestudio.utils.base import BaseObject

from ..core import guidance_eval as eval_pictures, sds, vae
from ..core.checkpoints import checkpoint_base_mismatch, resolve_checkpoint
from ..defaults import DEFAULT_MODEL


@threestudio.register("dreambooth-sds-guidance")
class DreamBoothSDSGuidance(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        # -- every key of threestudio's stable-diffusion-guidance, same meaning --
        pretrained_model_name_or_path: str = DEFAULT_MODEL
        enable_memory_efficient_attention: bool = False  # accepted: torch 2's SDPA is always on
        enable_sequential_cpu_offload: bool = False  # weights stay in CPU memory, layers move to the GPU when run
        enable_attention_slicing: bool = False
        enable_channels_last_format: bool = False
        guidance_scale: float = 100.0
        grad_clip: Optional[Any] = None  # C() value, as in threestudio
        half_precision_weights: bool = True  # fp16 on CUDA; always fp32 on CPU

        min_step_percent: Any = 0.02  # C() values
        max_step_percent: Any = 0.98
        sqrt_anneal: bool = False  # HiFA's sqrt anneal of t
        trainer_max_steps: int = 25000
        use_img_loss: bool = False  # HiFA's image-space SDS: adds loss_sds_img (set system.loss.lambda_sds_img)

        use_sjc: bool = False  # score Jacobian chaining instead of SDS
        var_red: bool = True  # SJC's variance reduction
        weighting_strategy: str = "sds"  # sds | uniform | fantasia3d

        token_merging: bool = False  # ToMe for SD (needs `pip install tomesd`)
        token_merging_params: Optional[dict] = field(default_factory=dict)

        view_dependent_prompting: bool = True

        max_items_eval: int = 4  # guidance_eval images for at most this many batch items (-1: all)

        # -- ours --
        checkpoint: Optional[str] = None  # checkpoint folder, or finetuning output + checkpoint_name
        checkpoint_name: Optional[str] = None  # partial | full | multiview | ...
        # translate() (stage 2's img2img) needs the text encoder; SDS does not (the prompt
        # processor embeds), so it is not loaded unless this is set. dreambooth3d-system sets it in stage 2.
        keep_text_encoder: bool = False
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
        from ..core.sd_models import DENOISING_PARTS, TEXT_PARTS, load_sd_components, weights_dtype

        sds.check_weighting(self.cfg.weighting_strategy)
        self.checkpoint_path = resolve_checkpoint(self.cfg.checkpoint, self.cfg.checkpoint_name)
        mismatch = checkpoint_base_mismatch(self.checkpoint_path, self.cfg.pretrained_model_name_or_path)
        if mismatch:
            threestudio.warn(mismatch)
        self.weights_dtype = weights_dtype(self.cfg.half_precision_weights, self.device)
        offload = self.cfg.enable_sequential_cpu_offload and self.device.type != "cpu"
        if self.cfg.enable_sequential_cpu_offload and not offload:
            threestudio.warn("enable_sequential_cpu_offload has no effect when the guidance runs on the CPU")
        threestudio.info(f"Loading Stable Diffusion {self.cfg.pretrained_model_name_or_path} + {self.checkpoint_path} ...")
        # SDS never runs the text encoder (the prompt processor embeds): it is loaded only for translate()
        parts = DENOISING_PARTS + (TEXT_PARTS if self.cfg.keep_text_encoder else ())
        self.components = load_sd_components(
            self.cfg.pretrained_model_name_or_path, checkpoint=self.checkpoint_path,
            device=None if offload else self.device, dtype=self.weights_dtype, parts=parts,
        )
        self.components.freeze()
        if self.cfg.enable_memory_efficient_attention:
            threestudio.info("PyTorch 2 uses memory efficient attention by default.")
        if offload:
            from accelerate import cpu_offload

            for module in self.components.modules():
                cpu_offload(module, execution_device=self.device)
        if self.cfg.enable_attention_slicing:
            self.components.unet.set_attention_slice(1)
        if self.cfg.enable_channels_last_format:
            self.components.unet.to(memory_format=torch.channels_last)
        if self.cfg.token_merging:
            try:
                import tomesd
            except ImportError as e:
                raise ImportError("system.guidance.token_merging=true needs ToMe for SD: pip install tomesd "
                                  "(or set token_merging=false)") from e
            tomesd.apply_patch(self.components.unet, **(self.cfg.token_merging_params or {}))
        self.num_train_timesteps = self.components.scheduler.config.num_train_timesteps
        # threestudio's names, for code that reads them off a guidance
        self.alphas = self.components.scheduler.alphas_cumprod.to(self.device)
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
            use_img_loss=self.cfg.use_img_loss,
            use_sjc=self.cfg.use_sjc,
            var_red=self.cfg.var_red,
        )

    def encode_images(self, imgs: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] at the model resolution -> scaled latents (threestudio's method)."""
        return vae.encode_images(self.components.vae, imgs)

    def decode_latents(self, latents: torch.Tensor, latent_height: Optional[int] = None,
                       latent_width: Optional[int] = None) -> torch.Tensor:
        """Latents [B, 4, h, w] -> images [B, 3, H, W] in [0, 1], resized first to the model's
        latent size (threestudio hard-codes 64 x 64, SD's at 512 px); Latent-NeRF decodes its renders with it."""
        size = int(self.components.unet.config.sample_size)
        latent_height, latent_width = latent_height or size, latent_width or size
        latents = torch.nn.functional.interpolate(latents, (latent_height, latent_width), mode="bilinear",
                                                  align_corners=False)
        return vae.decode_latents(self.components.vae, latents)

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
        """threestudio's guidance call: ``rgb`` [B, H, W, 3] in [0, 1] (or 4 latent channels with
        ``rgb_as_latents``) -> ``loss_sds`` (+ ``loss_sds_img``), logs and optional ``eval`` images."""
        neg_guidance_weights = None
        if prompt_utils.use_perp_neg:
            text_embeddings, neg_guidance_weights = prompt_utils.get_text_embeddings_perp_neg(
                elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
            )
        else:
            text_embeddings = prompt_utils.get_text_embeddings(
                elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
            )
        # t is drawn inside, after encoding, with torch's global generator on this device:
        # the same draws in the same order as threestudio's guidance
        out = sds.score_distillation(
            self.components, rgb, text_embeddings, self._sds_config(), rgb_as_latents=rgb_as_latents,
            neg_guidance_weights=neg_guidance_weights, steps=(self.min_step, self.max_step),
        )
        guidance_out = {
            "loss_sds": out["loss_sds"],
            "grad_norm": out["grad_norm"],
            "min_step": self.min_step,
            "max_step": self.max_step,
        }
        if "loss_sds_img" in out:
            guidance_out["loss_sds_img"] = out["loss_sds_img"]
        if guidance_eval:
            eval_out = eval_pictures.guidance_eval(
                self.components, out["t"], text_embeddings, out["latents_noisy"], out["noise_pred"],
                self.cfg.guidance_scale, neg_guidance_weights, max_items=self.cfg.max_items_eval,
            )
            eval_out["texts"] = [
                f"n{n:.02f}\ne{e.item():.01f}\na{a.item():.01f}\nc{c.item():.02f}"
                for n, e, a, c in zip(eval_out["noise_levels"], elevation, azimuth, camera_distances)
            ]
            guidance_out["eval"] = eval_out
        return guidance_out

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

        if self.components.text_encoder is None:
            raise RuntimeError(
                "dreambooth-sds-guidance loads no text encoder (SDS does not use it); translate() needs it: "
                "set system.guidance.keep_text_encoder=true (dreambooth3d-system does in stage 2)"
            )
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
