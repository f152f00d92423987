"""MVDreamBooth: DreamBooth on MVDream's multi-view model, keeping its multi-view ability.

The subject photos have no cameras and no other views, so they train in MVDream's 2D mode
(one view, ``num_frames=1``, no camera: the time embedding alone). Photos alone would let
the multi-view pathway (camera embedding, cross-view self-attention) drift unsupervised,
so two regularisers keep it, both on by default:

* **multi-view class prior** (DreamBooth's prior preservation, in multi-view mode): sets of
  4 views of the class prompt at MVDream's standard cameras (15 deg elevation, 90 deg apart),
  sampled once by the base model itself in multi-view mode and cached; each step trains
  on one set with ``num_frames=4`` and its cameras. It is the one term that exercises the
  cross-view attention and the camera embedding with the base model's own multi-view
  behaviour as target.
* **parameter preservation** (the MVDream paper's multi-view DreamBooth, Sec. 3.3: no class
  images, ``L = L_LDM(photos) + lambda * ||theta - theta_0||_1 / N_theta``): a cheap pull of
  the trained weights towards where they started (the L1 norm by default, L2 optional). In
  LoRA mode ``theta - theta_0`` is the adapters' weight delta, in full mode the change since
  the run started.

The prior costs sampling the class sets (``--num-class-images`` counts views, rounded up to
whole sets) and a second UNet pass per step; ``--no-prior`` leaves the paper's recipe alone,
``--param-preservation-weight 0`` the prior alone.

Checkpoints are the usual DreamBooth ones (:mod:`.checkpoints`) with the MVDream folder as
``base_model``; :func:`.sd_models.load_mvdream_unet` loads one as the personalised multi-view
UNet for guidance.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .dreambooth import DreamBoothConfig, DreamBoothTrainer
from .mvdream import NUM_VIEWS, standard_cameras
from .sd_models import SDComponents, load_mvdream_components
from .subject import load_images
from ..errors import ConfigError
from ..fs import atomic_write_dir

log = logging.getLogger(__name__)

PRESERVATION_NORMS = ("l1", "l2")


@dataclass
class MVDreamBoothConfig(DreamBoothConfig):
    """:class:`~.dreambooth.DreamBoothConfig` for an MVDream folder (``pretrained_model``), plus the regularisers."""

    base_model: ClassVar[str] = "mvdream"  # what `finetune --base-model` chose
    param_preservation_weight: float = 1.0
    # a pseudo-view set (stage 2's folder) trained as 4-view sets at its cameras (run --prior mvdream)
    extra_views: Optional[str] = None
    param_preservation_norm: str = "l1"
    class_elevation: float = 15.0  # the standard cameras of the class sets
    class_guidance_scale: float = 7.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.param_preservation_norm not in PRESERVATION_NORMS:
            raise ConfigError(f"param_preservation_norm must be one of {', '.join(PRESERVATION_NORMS)}, "
                              f"not {self.param_preservation_norm!r}")
        if not (math.isfinite(self.param_preservation_weight) and self.param_preservation_weight >= 0):
            raise ConfigError(f"param_preservation_weight must be a finite number >= 0, not {self.param_preservation_weight}")

    @property
    def trainer_class(self):
        return MVDreamBoothTrainer

    @property
    def num_class_sets(self) -> int:
        return math.ceil(self.num_class_images / NUM_VIEWS)

    @property
    def class_dir(self) -> Path:
        # not shared with 2D class images: these are multi-view sets with their cameras
        return Path(self.class_images_dir or Path(self.output_dir) / "class_sets")


@torch.no_grad()
def sample_multiview(components: SDComponents, prompt: str, cameras: torch.Tensor, num_inference_steps: int = 25,
                     guidance_scale: float = 7.5, seed: int = 0, negative_prompt: str = "") -> torch.Tensor:
    """One object's views [F, 3, R, R] in [0, 1] from the multi-view model (DDIM, CFG), F = len(cameras)."""
    from diffusers import DDIMScheduler

    from .vae import decode_latents

    unet, device = components.unet, components.unet.device
    scheduler = DDIMScheduler.from_config(components.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    n = len(cameras)
    emb = components.encode_prompts([negative_prompt, prompt], device=device).to(unet.dtype)
    context = emb.repeat_interleave(n, dim=0)  # [uncond x n, cond x n]
    camera = cameras.to(device, unet.dtype).repeat(2, 1)
    size = int(unet.config.sample_size)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, unet.config.in_channels, size, size, generator=g).to(device, unet.dtype)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = unet(torch.cat([latents, latents]), t, encoder_hidden_states=context, camera=camera,
                   num_frames=n).sample
        uncond, cond = eps.chunk(2)
        latents = scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents).prev_sample
    return decode_latents(components.vae, latents).float().cpu()


CAMERAS_FILE = "cameras.json"


def ensure_class_sets(cfg: MVDreamBoothConfig, components: SDComponents) -> List[Path]:
    """Sample (once) and cache the multi-view class sets: ``CLASS_DIR/set_NNNNN/view_J.png`` + cameras.json.

    Set ``i`` starts its orbit at azimuth ``22.5 * (i % 4)`` so the sets cover the circle.
    """
    from PIL import Image

    folder = cfg.class_dir
    folder.mkdir(parents=True, exist_ok=True)
    done = lambda: sorted(p.parent for p in folder.glob(f"set_*/{CAMERAS_FILE}"))
    existing = done()
    missing = cfg.num_class_sets - len(existing)
    if missing > 0:
        log.info("Sampling %d multi-view class sets for %r into %s", missing, cfg.class_prompt_text, folder)
        start = len(existing)
        for i in tqdm(range(start, start + missing), desc="class sets", leave=False):
            cams = standard_cameras(NUM_VIEWS, elevation=cfg.class_elevation, azimuth_start=22.5 * (i % 4))
            views = sample_multiview(components, cfg.class_prompt_text, cams, cfg.class_inference_steps,
                                     cfg.class_guidance_scale, seed=cfg.seed + 10_000 + i)

            def write(tmp: Path, views=views, cams=cams) -> None:
                for j, img in enumerate(views):
                    arr = (img.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
                    Image.fromarray(arr).save(tmp / f"view_{j}.png")
                (tmp / CAMERAS_FILE).write_text(json.dumps({"prompt": cfg.class_prompt_text,
                                                            "cameras": cams.tolist()}))

            atomic_write_dir(folder / f"set_{i:05d}", write)
    return done()[: cfg.num_class_sets]


def load_class_sets(set_dirs: List[Path], resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pixels [S * 4, 3, R, R] and cameras [S * 4, 16] of cached class sets, set by set."""
    paths, cams = [], []
    for d in set_dirs:
        paths += [d / f"view_{j}.png" for j in range(NUM_VIEWS)]
        cams.append(torch.tensor(json.loads((d / CAMERAS_FILE).read_text())["cameras"], dtype=torch.float32))
    return load_images(paths, resolution, min_side=1), torch.cat(cams)


def parameter_deviation(modules: Dict[str, torch.nn.Module], start: Dict[str, torch.Tensor],
                        norm: str = "l1") -> torch.Tensor:
    """``||theta - theta_0||`` (L1, or squared L2) over the trained weights, divided by their count.

    LoRA layers count their weight delta (what merging would add to the base weight);
    other trained parameters their change from ``start`` (name -> weights at the start).
    """
    from peft.tuners.lora import LoraLayer

    total, count = None, 0
    for prefix, module in modules.items():
        for name, sub in module.named_modules():
            if isinstance(sub, LoraLayer) and "default" in sub.lora_A:
                if any(p.requires_grad for p in sub.lora_A["default"].parameters()):
                    deltas = [sub.get_delta_weight("default")]
                    total, count = _accumulate(total, count, deltas, norm)
        for name, p in module.named_parameters():
            key = f"{prefix}.{name}"
            if p.requires_grad and key in start:
                total, count = _accumulate(total, count, [p - start[key].to(p.device, p.dtype)], norm)
    if total is None:
        return torch.zeros(())
    return total / count


def _accumulate(total, count, deltas, norm):
    for d in deltas:
        term = d.abs().sum() if norm == "l1" else d.float().pow(2).sum()
        total = term.float() if total is None else total + term.float()
        count += d.numel()
    return total, count


def load_view_sets(folder, resolution: int, n_view: int = NUM_VIEWS) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """A pseudo-view set (stage 2's folder) as ``n_view``-view sets: pixels [S * n_view, 3, R, R] in
    [-1, 1], MVDream cameras [S * n_view, 16] of the stored c2w, and the views' captions, set by set.

    Sets are spread around the object (:func:`.pseudo_views.multiview_sets`); every view keeps the
    camera it was rendered from, so the multi-view model learns the subject's views where they are.
    """
    from .mvdream import mvdream_camera
    from .pseudo_views import multiview_sets, read_pseudo_views

    views = read_pseudo_views(folder)
    order = [i for s in multiview_sets([c["azimuth_deg"] for c in views.cameras], n_view) for i in s]
    images = views.images[order].permute(0, 3, 1, 2)
    pixels = F.interpolate(images, (resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    c2w = torch.tensor([views.cameras[i]["c2w"] for i in order], dtype=torch.float32)
    return pixels * 2.0 - 1.0, mvdream_camera(c2w), [views.captions[i] for i in order]


class MVDreamBoothTrainer(DreamBoothTrainer):
    """DreamBooth on a :class:`~.mvdream.MultiViewUNet`: photos at F = 1, class sets at F = 4 (module docstring)."""

    cfg: MVDreamBoothConfig

    def __init__(self, cfg: MVDreamBoothConfig, components: Optional[SDComponents] = None):
        # refuses a folder that is not MVDream before anything else is loaded
        super().__init__(cfg, components or load_mvdream_components(cfg.pretrained_model))
        # full mode: the starting weights, for the parameter-preservation term
        self.start_weights: Dict[str, torch.Tensor] = {}
        if cfg.mode == "full" and cfg.param_preservation_weight > 0:
            for prefix, module in self._trained_modules().items():
                self.start_weights.update({f"{prefix}.{n}": p.detach().clone()
                                           for n, p in module.named_parameters() if p.requires_grad})

    def _trained_modules(self) -> Dict[str, torch.nn.Module]:
        comps = self.components
        return {"unet": comps.unet, **({"text_encoder": comps.text_encoder} if self.cfg.train_text_encoder else {})}

    def _load_class_pixels(self) -> Optional[torch.Tensor]:
        sets = ensure_class_sets(self.cfg, self.components)
        if not sets:
            return None
        pixels, self.class_cameras = load_class_sets(sets, self.resolution)
        self.class_cameras = self.class_cameras.to(self.device)
        return pixels

    def sample_batch(self, generator: torch.Generator) -> Dict[str, object]:
        """Groups, each one UNet pass: the photos (F = 1, no camera) and one class set (F = 4, its cameras)."""
        n = self.cfg.batch_size
        idx = torch.randint(len(self.inst_mean), (n,), generator=generator).to(self.device)
        eps = torch.randn(self.inst_mean[idx].shape, generator=generator).to(self.device)
        groups = [{"kind": "instance", "latents": self.inst_mean[idx] + self.inst_std[idx] * eps,
                   "cond": self._embed(self.inst_ids, getattr(self, "inst_emb", None), idx),
                   "camera": None, "num_frames": 1}]
        if self.class_pixels is not None:
            s = int(torch.randint(len(self.cls_mean) // NUM_VIEWS, (1,), generator=generator))
            rows = torch.arange(s * NUM_VIEWS, (s + 1) * NUM_VIEWS, device=self.device)
            ceps = torch.randn(self.cls_mean[rows].shape, generator=generator).to(self.device)
            zero = torch.zeros(NUM_VIEWS, dtype=torch.long, device=self.device)
            groups.append({"kind": "prior", "latents": self.cls_mean[rows] + self.cls_std[rows] * ceps,
                           "cond": self._embed(self.cls_ids, getattr(self, "cls_emb", None), zero),
                           "camera": self.class_cameras[rows], "num_frames": NUM_VIEWS})
        for g in groups:
            g["latents"] = g["latents"] * self.components.vae.config.scaling_factor
        if self.view_sets:
            groups.append(self._view_group(generator))
        return {"groups": groups}

    def _cache_inputs(self) -> None:
        super()._cache_inputs()
        self.view_sets = 0
        if self.cfg.extra_views:
            # the pseudo views: 4-view sets at their own cameras (the continued multi-view DreamBooth)
            pixels, cameras, captions = load_view_sets(self.cfg.extra_views, self.resolution)
            self.view_mean, self.view_std = self._encode_pixels(pixels)
            self.view_cameras = cameras.to(self.device)
            self.view_ids = self.components.tokenize(captions)
            if not self.cfg.train_text_encoder:
                with torch.no_grad():
                    self.view_emb = self.components.text_encoder(self.view_ids)[0]
            self.view_sets = len(captions) // NUM_VIEWS

    def _view_group(self, generator: torch.Generator) -> Dict[str, object]:
        """One pseudo-view set (F = 4, its cameras, each view its caption), scaled latents."""
        s = int(torch.randint(self.view_sets, (1,), generator=generator))
        rows = torch.arange(s * NUM_VIEWS, (s + 1) * NUM_VIEWS, device=self.device)
        eps = torch.randn(self.view_mean[rows].shape, generator=generator).to(self.device)
        latents = (self.view_mean[rows] + self.view_std[rows] * eps) * self.components.vae.config.scaling_factor
        return {"kind": "views", "latents": latents, "cond": self._embed(self.view_ids, getattr(self, "view_emb", None), rows),
                "camera": self.view_cameras[rows], "num_frames": NUM_VIEWS}

    def loss(self, batch: Dict[str, object], generator: torch.Generator) -> Dict[str, torch.Tensor]:
        sched, unet = self.components.scheduler, self.components.unet
        out: Dict[str, torch.Tensor] = {}
        for g in batch["groups"]:
            latents, frames = g["latents"], g["num_frames"]
            noise = torch.randn(latents.shape, generator=generator).to(self.device)
            # one t per object: its views are denoised together, as in multi-view SDS
            t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0] // frames,), generator=generator)
            t = t.repeat_interleave(frames).to(self.device)
            noisy = sched.add_noise(latents, noise, t)
            target = sched.get_velocity(latents, noise, t) if self.components.prediction_type == "v_prediction" else noise
            camera = g["camera"].to(unet.dtype) if g["camera"] is not None else None
            pred = unet(noisy.to(unet.dtype), t, encoder_hidden_states=g["cond"].to(unet.dtype), camera=camera,
                        num_frames=frames).sample.float()
            out[f"{g['kind']}_loss"] = F.mse_loss(pred, target)
        out["loss"] = out["instance_loss"]
        if "prior_loss" in out:
            out["loss"] = out["loss"] + self.cfg.prior_loss_weight * out["prior_loss"]
        if "views_loss" in out:  # the pseudo views are the subject's, as the photos
            out["loss"] = out["loss"] + out["views_loss"]
        if self.cfg.param_preservation_weight > 0:
            out["param_loss"] = parameter_deviation(self._trained_modules(), self.start_weights,
                                                    self.cfg.param_preservation_norm).to(self.device)
            out["loss"] = out["loss"] + self.cfg.param_preservation_weight * out["param_loss"]
        return out
