"""``dreambooth3d-system``: the three DreamBooth3D stages as one threestudio system.

* ``stage: 1`` - DreamFusion SDS (threestudio's ``dreamfusion-system`` training step,
  unchanged) with the guidance on the *partial* DreamBooth checkpoint.
* ``stage: 2`` - the test phase of a stage-1 checkpoint (``launch.py --test
  resume=STAGE1.ckpt``): renders the orbit cameras of the datamodule, translates the
  renders with the *full* checkpoint (img2img, batched) and writes the pseudo-view set
  (images, their cameras, masks from the render's opacity, a contact sheet) to
  ``pseudo_views_dir``.
* ``stage: 3`` - stage 1's loss plus ``lambda_rec`` x MSE between a render at the pseudo
  camera of the step and that pseudo view (and optionally ``lambda_rec_mask`` x BCE of
  opacity against its mask), with the *multi-view* checkpoint; ``weights`` may name the
  stage-1 checkpoint to start from.

Every loss weight is a threestudio ``C()`` value. The test phase of stages 1 and 3
writes the turntable video; ``--export`` uses threestudio's exporters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

import threestudio
from threestudio.systems.dreamfusion import DreamFusion
from threestudio.utils.ops import binary_cross_entropy


@threestudio.register("dreambooth3d-system")
class DreamBooth3DSystem(DreamFusion):
    @dataclass
    class Config(DreamFusion.Config):
        stage: int = 1
        # stage 2: where the pseudo-view set goes and how renders are translated
        pseudo_views_dir: Optional[str] = None
        translation_prompt: Optional[str] = None  # default: prompt_processor.prompt
        view_dependent_translation: bool = True  # "<prompt>, <view> view" per camera
        translation_seed: int = 0
        # shading (albedo | diffuse) of the renders stage 2 translates and stage 3 compares
        # with them; the light sits at the camera in both, so both stages form the image alike
        pseudo_view_shading: str = "diffuse"

    cfg: Config

    def configure(self) -> None:
        if self.cfg.stage not in (1, 2, 3):
            raise ValueError(f"system.stage must be 1, 2 or 3, not {self.cfg.stage}")
        if self.cfg.pseudo_view_shading not in ("albedo", "diffuse"):
            raise ValueError(f"system.pseudo_view_shading must be albedo or diffuse, not {self.cfg.pseudo_view_shading!r}")
        super().configure()

    # -- stages 1 and 3: training ---------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.cfg.stage == 2:
            raise ValueError(
                "stage 2 does not train: run it as the test phase of the stage-1 checkpoint, "
                "launch.py --config configs/dreambooth3d-stage2.yaml --test resume=STAGE1_TRIAL/ckpts/last.ckpt"
            )
        super().on_fit_start()

    def reconstruction_losses(self, pseudo: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Render at the step's pseudo camera and compare with the pseudo view."""
        out = self.renderer(
            rays_o=pseudo["rays_o"], rays_d=pseudo["rays_d"], light_positions=pseudo["light_positions"],
            shading=self.cfg.pseudo_view_shading,  # training renders pass it to the material
        )
        losses = {"loss_rec": F.mse_loss(out["comp_rgb"], pseudo["rgb"])}
        if "mask" in pseudo:
            opacity = out["opacity"].clamp(1.0e-3, 1.0 - 1.0e-3)
            losses["loss_rec_mask"] = binary_cross_entropy(opacity, pseudo["mask"].clamp(0.0, 1.0))
        return losses

    def training_step(self, batch, batch_idx):
        pseudo = batch.pop("pseudo", None)
        weights = {name: self.C(self.cfg.loss.get(f"lambda_{name}", 0.0)) for name in ("rec", "rec_mask")}
        if not any(w > 0 for w in weights.values()):
            pseudo = None  # nothing to reconstruct this step (e.g. a schedule still at 0)
        elif pseudo is None:
            raise ValueError(
                "system.loss.lambda_rec > 0 needs pseudo views: set data.pseudo_views_dir to the folder stage 2 wrote"
            )
        out = super().training_step(batch, batch_idx)  # DreamFusion: SDS + its regularisers
        if pseudo is not None:
            for name, value in self.reconstruction_losses(pseudo).items():
                self.log(f"train/{name}", value)
                out["loss"] = out["loss"] + value * weights[name[len("loss_"):]]
        return out

    # -- stage 2: render, translate, write ---------------------------------------------------
    def on_test_start(self) -> None:
        super().on_test_start()
        if self.cfg.stage == 2:
            if not self.cfg.pseudo_views_dir:
                raise ValueError("stage 2 writes the pseudo-view set to system.pseudo_views_dir: set it")
            self.guidance = threestudio.find(self.cfg.guidance_type)(self.cfg.guidance)
            self._pseudo_renders: List[Dict[str, torch.Tensor]] = []

    def test_step(self, batch, batch_idx):
        if self.cfg.stage != 2:
            return super().test_step(batch, batch_idx)
        # threestudio's evaluation renders do not forward a shading argument to the material:
        # diffuse-with-point-light shades "albedo" while ambient_only, else "diffuse"
        if hasattr(self.material, "ambient_only"):
            self.material.ambient_only = self.cfg.pseudo_view_shading == "albedo"
        out = self(batch)
        self._pseudo_renders.append({
            "rgb": out["comp_rgb"].detach().permute(0, 3, 1, 2).float().cpu(),  # [B, 3, H, W]
            "opacity": out["opacity"].detach().permute(0, 3, 1, 2).float().cpu(),
            **{k: batch[k].detach().float().cpu() for k in ("c2w", "elevation", "azimuth", "camera_distances", "fovy")},
        })

    def on_test_epoch_end(self):
        if self.cfg.stage != 2:
            return super().on_test_epoch_end()
        self.write_pseudo_views(self._pseudo_renders)

    def translation_prompts(self, elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor) -> List[str]:
        from ..core import views

        prompt = self.cfg.translation_prompt or self.cfg.prompt_processor.prompt
        if not self.cfg.view_dependent_translation:
            return [prompt] * len(elevation_deg)
        return [views.view_prompt(prompt, v) for v in views.view_names(elevation_deg, azimuth_deg)]

    def write_pseudo_views(self, renders: List[Dict[str, torch.Tensor]]):
        """Translate the collected renders (one batched img2img pass) and write the set."""
        from ..core.pseudo_views import write_pseudo_views

        cat = {k: torch.cat([r[k] for r in renders]) for k in renders[0]}
        prompts = self.translation_prompts(cat["elevation"], cat["azimuth"])
        threestudio.info(f"Translating {len(prompts)} renders with {self.guidance.checkpoint_path} ...")
        renders_rgb = cat["rgb"].clamp(0, 1)
        translated = self.guidance.translate(renders_rgb.to(self.device), prompts, seed=self.cfg.translation_seed)
        folder = write_pseudo_views(
            self.cfg.pseudo_views_dir, translated.float().cpu(), cat, captions=prompts,
            masks=cat["opacity"].clamp(0, 1), renders=renders_rgb,
        )
        threestudio.info(f"Pseudo-view set ({len(prompts)} views) written to {folder}")
        return folder
