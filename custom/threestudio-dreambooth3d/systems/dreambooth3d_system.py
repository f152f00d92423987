"""``dreambooth3d-system``: the three DreamBooth3D stages as one threestudio system.

* ``stage: 1`` - DreamFusion SDS (threestudio's ``dreamfusion-system`` training step,
  unchanged) with the guidance on the *partial* DreamBooth checkpoint.
* ``stage: 2`` - the test phase of a stage-1 checkpoint (``launch.py --test
  resume=STAGE1.ckpt``): renders the datamodule's test cameras (random viewpoints, or an
  orbit), translates the renders with the *full* checkpoint (img2img, batched) and writes
  the pseudo-view set (images, their cameras, masks from the render's opacity, a contact
  sheet) to ``pseudo_views_dir``. Translation prompts and captions are the subject prompt
  (the checkpoint's ``a sks <class>``), the stage's prompt or a custom one
  (``translation_prompt``: subject | scene | text, core :mod:`~..core.translation`) made
  view-dependent exactly as ``system.prompt_processor`` makes the SDS prompts (its
  thresholds and prefix/suffix style, core :class:`~..core.views.ViewPrompts`). The
  translated views are scored and the worst dropped (``pseudo_view_filter``, core
  :mod:`~..core.view_filter`); only the kept views are the set.
* ``stage: 3`` - stage 1's loss plus ``lambda_rec`` x MSE between a render at the pseudo
  camera of the step and that pseudo view (weighted by the view's mask when
  ``rec_mask_weighting``: the background is ignored), optionally ``lambda_rec_mask`` x
  BCE of opacity against its mask, with the *multi-view* checkpoint; ``weights`` may name
  the stage-1 checkpoint to start from.

Every loss weight is a threestudio ``C()`` value. The test phase of stages 1 and 3
writes the turntable video; ``--export`` uses threestudio's exporters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf

import threestudio
from threestudio.systems.dreamfusion import DreamFusion

from ..core import stages, translation
from ..core.views import ViewPrompts


@threestudio.register("dreambooth3d-system")
class DreamBooth3DSystem(DreamFusion):
    @dataclass
    class Config(DreamFusion.Config):
        stage: int = 1
        # stage 2: where the pseudo-view set goes and how renders are translated
        pseudo_views_dir: Optional[str] = None
        # subject (default: the prompt the checkpoint was trained with, "a sks dog"), scene (the
        # stage's prompt, with its context) or a custom text (core/translation.py)
        translation_prompt: Optional[str] = None
        # core.view_filter.ViewFilterConfig's keys; {"enabled": false} keeps every view
        pseudo_view_filter: dict = field(default_factory=dict)
        view_dependent_translation: bool = True  # per camera, in the prompt processor's style
        translation_seed: int = 0
        # stage 3: weight the reconstruction MSE by the pseudo view's mask (stage-1 opacity),
        # grown by rec_mask_dilation pixels at the reconstruction render size
        rec_mask_weighting: bool = True
        rec_mask_dilation: int = 2
        # shading (albedo | diffuse) of the renders stage 2 translates and stage 3 compares
        # with them; the light sits at the camera in both, so both stages form the image alike
        pseudo_view_shading: str = "diffuse"

    cfg: Config

    def configure(self) -> None:
        stages.check_system_config(self.cfg.stage, self.cfg.rec_mask_dilation, self.cfg.pseudo_view_shading)
        self.view_filter  # a bad pseudo_view_filter is reported before any work
        super().configure()

    @property
    def view_filter(self):
        from ..core.view_filter import ViewFilterConfig

        return ViewFilterConfig.from_dict(OmegaConf.to_container(OmegaConf.create(self.cfg.pseudo_view_filter)))

    # -- stages 1 and 3: training ---------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.cfg.stage == 2:
            raise ValueError(
                "stage 2 does not train: run it as the test phase of the stage-1 checkpoint, "
                "launch.py --config configs/dreambooth3d-stage2.yaml --test resume=STAGE1_TRIAL/ckpts/last.ckpt"
            )
        self.check_pseudo_views()
        super().on_fit_start()

    def check_pseudo_views(self) -> None:
        """Masked reconstruction needs masks in the set: say so before the first step."""
        try:
            datamodule = self.trainer.datamodule
        except RuntimeError:  # not attached to a Trainer (a test driving the system by hand)
            datamodule = None
        views = getattr(getattr(datamodule, "train_dataset", None), "pseudo_views", None)
        if views is not None and self.cfg.rec_mask_weighting and "mask" not in views.batch:
            raise ValueError(
                f"system.rec_mask_weighting is on but the pseudo-view set {views.folder} has no masks/: "
                "rerun stage 2 (it writes them), or set system.rec_mask_weighting=false"
            )

    def reconstruction_losses(self, pseudo: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """Render at the step's pseudo camera and compare with the pseudo view."""
        out = self.renderer(
            rays_o=pseudo["rays_o"], rays_d=pseudo["rays_d"], light_positions=pseudo["light_positions"],
            shading=self.cfg.pseudo_view_shading,  # training renders pass it to the material
        )
        return stages.reconstruction_losses(out["comp_rgb"], out["opacity"], pseudo["rgb"], pseudo.get("mask"),
                                            self.cfg.rec_mask_weighting, self.cfg.rec_mask_dilation)

    def training_step(self, batch, batch_idx):
        pseudo = batch.pop("pseudo", None)
        weights = {key: self.C(self.cfg.loss.get(key, 0.0)) for key in stages.RECONSTRUCTION_WEIGHTS.values()}
        if not stages.reconstruction_active(weights, pseudo is not None):
            pseudo = None
        out = super().training_step(batch, batch_idx)  # DreamFusion: SDS + its regularisers
        if pseudo is not None:
            losses = self.reconstruction_losses(pseudo)
            for name, value in losses.items():
                self.log(f"train/{name}", value)
            out["loss"] = stages.add_weighted(out["loss"], losses, weights)
        return out

    # -- stage 2: render, translate, write ---------------------------------------------------
    def on_test_start(self) -> None:
        super().on_test_start()
        if self.cfg.stage == 2:
            if not self.cfg.pseudo_views_dir:
                raise ValueError("stage 2 writes the pseudo-view set to system.pseudo_views_dir: set it")
            # translation runs the text encoder, which the guidance otherwise frees
            guidance_cfg = OmegaConf.merge(self.cfg.guidance, {"keep_text_encoder": True})
            self.guidance = threestudio.find(self.cfg.guidance_type)(guidance_cfg)
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

    @property
    def view_prompts(self) -> ViewPrompts:
        """The prompt processor's view settings: captions name a camera as its SDS prompt does."""
        return ViewPrompts.from_config(self.cfg.prompt_processor)

    def subject_prompt(self) -> str:
        """The translation prompt ``translation_prompt`` chooses: the prompt the stage's DreamBooth
        checkpoint was trained on (subject), the stage's prompt (scene) or a custom text."""
        from ..core.checkpoints import read_meta
        from ..core.config_text import decode_literal

        # user text reaches the config percent-encoded when it holds "${" (core/config_text.py)
        return translation.translation_base_prompt(decode_literal(self.cfg.translation_prompt),
                                       lambda: read_meta(self.guidance.checkpoint_path)["instance_prompt"],
                                       decode_literal(self.cfg.prompt_processor.prompt))

    def translation_prompts(self, elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor) -> List[str]:
        views = self.view_prompts if self.cfg.view_dependent_translation else None
        return translation.translation_prompts(self.subject_prompt(), elevation_deg, azimuth_deg, views)

    def write_pseudo_views(self, renders: List[Dict[str, torch.Tensor]]):
        """Translate the collected renders (one batched img2img pass) and write the set."""
        from ..core.pseudo_views import write_pseudo_views

        cat = {k: torch.cat([r[k] for r in renders]) for k in renders[0]}
        prompts = self.translation_prompts(cat["elevation"], cat["azimuth"])
        threestudio.info(f"Translating {len(prompts)} renders with {self.guidance.checkpoint_path} ...")
        renders_rgb = cat["rgb"].clamp(0, 1)
        translated = self.guidance.translate(renders_rgb.to(self.device), prompts, seed=self.cfg.translation_seed)
        translated = translated.float().cpu()
        masks = cat["opacity"].clamp(0, 1)
        decisions, report = self.filter_views(translated, renders_rgb, masks)
        folder = write_pseudo_views(
            self.cfg.pseudo_views_dir, translated, cat, captions=prompts, masks=masks, renders=renders_rgb,
            view_names=self.view_prompts.names(cat["elevation"], cat["azimuth"]),
            decisions=decisions, filter_info=report,
        )
        threestudio.info(f"Pseudo-view set ({report['kept']} of {len(prompts)} views kept) written to {folder}")
        return folder

    def filter_views(self, translated: torch.Tensor, renders: torch.Tensor, masks: torch.Tensor):
        """Score the translations (core.view_filter); with an encoder, also against the photos."""
        from ..core.view_filter import filter_views

        cfg = self.view_filter
        view_emb = photo_emb = None
        if cfg.enabled and cfg.subject_encoder:
            from ..core.pseudo_views import to_pil_images
            from ..core.subject import list_subject_images, load_image
            from ..evaluation.encoders import load_image_encoder

            encoder = load_image_encoder(cfg.subject_encoder, device=self.device)
            view_emb = encoder.embed_images(to_pil_images(translated))
            # the photos as eval reads them for CLIP-I/DINO: native size, each encoder resizes its way
            photo_emb = encoder.embed_images([load_image(p, resolution=None) for p in list_subject_images(cfg.subject_dir)])
            del encoder
        return filter_views(translated, renders, masks, cfg, view_emb, photo_emb)
