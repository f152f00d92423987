"""``pseudo-multiview-datamodule``: threestudio's random cameras for SDS plus one pseudo view per step.

Training batches are exactly those of threestudio's ``random-camera-datamodule`` (its
own dataset class makes them), with ``batch["pseudo"]`` added when a pseudo-view set is
configured: the rays, colours, mask (if the set has masks) and camera of one pseudo view,
drawn at random each step. Its rays come from the *stored* ``c2w`` and ``fovy`` (core
:mod:`cameras`, threestudio's ray conventions) at the training render size, so a pseudo
view is seen from exactly the camera stage 2 rendered it from; its image is area-resized
to that size.

Validation gives orbit cameras (core ``cameras.orbit_cameras``): ``n_val_views``
azimuths evenly spaced over 360 degrees (no repeated endpoint), elevation
``eval_elevations_deg`` (one value, a (low, high) ramp or one per view; default
``eval_elevation_deg``), distance ``eval_camera_distance``, ``eval_fovy_deg``. The test
split gives ``n_test_views`` cameras of kind ``test_cameras``: ``orbit`` (the turntable
of stages 1 and 3) or ``random`` (stage 2, the paper's "random viewpoints": drawn like
the training cameras from ``elevation_range``/``azimuth_range``/``camera_distance_range``/
``fovy_range`` with ``test_camera_seed``, core ``cameras.random_cameras``). Both render at
``eval_height`` x ``eval_width``. Stage 2 renders the test cameras and stores them with
the pseudo views.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import threestudio
from threestudio.data.uncond import (
    RandomCameraDataModule,
    RandomCameraDataModuleConfig,
    RandomCameraIterableDataset,
)
from threestudio.utils.config import parse_structured

from ..core import cameras


@dataclass
class PseudoMultiviewDataModuleConfig(RandomCameraDataModuleConfig):
    pseudo_views_dir: Optional[str] = None  # a pseudo-view set written by stage 2
    # resolution of the reconstruction render; default: the training height/width
    pseudo_view_height: Optional[int] = None
    pseudo_view_width: Optional[int] = None
    # orbit elevations: None = eval_elevation_deg; one value, a (low, high) pair ramped over
    # the views, or one value per view (cameras.orbit_cameras)
    eval_elevations_deg: Optional[List[float]] = None
    # test-split cameras: "orbit" (turntable) or "random" (drawn like the training cameras,
    # reproducibly from test_camera_seed; stage 2's pseudo viewpoints); n_test_views of them
    test_cameras: str = "orbit"
    test_camera_seed: int = 0


TEST_CAMERAS = ("orbit", "random")


def eval_cameras(cfg: PseudoMultiviewDataModuleConfig, split: str) -> Dict[str, Any]:
    """The camera batch of the val or test split (see the module docstring)."""
    if split == "test" and cfg.test_cameras == "random":
        return cameras.random_cameras(
            cfg.n_test_views, tuple(cfg.elevation_range), tuple(cfg.azimuth_range), tuple(cfg.camera_distance_range),
            tuple(cfg.fovy_range), cfg.eval_height, cfg.eval_width, seed=cfg.test_camera_seed,
            uniform_azimuth=cfg.batch_uniform_azimuth)
    n = cfg.n_val_views if split == "val" else cfg.n_test_views
    elevations = list(cfg.eval_elevations_deg or [cfg.eval_elevation_deg])
    return cameras.orbit_cameras(n, elevations, cfg.eval_camera_distance, cfg.eval_fovy_deg,
                                 cfg.eval_height, cfg.eval_width)


class OrbitDataset(Dataset):
    """The val/test cameras, one per item: an orbit, or random viewpoints (``test_cameras``)."""

    def __init__(self, cfg: PseudoMultiviewDataModuleConfig, split: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.views = eval_cameras(cfg, split)
        n = len(self.views["c2w"])
        self.views["rays_o"], self.views["rays_d"] = cameras.camera_rays(self.views, normalize=cfg.rays_d_normalize)
        self.n_views = n

    def __len__(self) -> int:
        return self.n_views

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = {k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in self.views.items()}
        item["index"] = index
        return item

    def collate(self, batch):
        batch = torch.utils.data.default_collate(batch)
        batch.update({"height": self.cfg.eval_height, "width": self.cfg.eval_width})
        return batch


def _resize_hwc(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, H, W, C] -> [N, height, width, C]; area-averaged when shrinking, like a smaller render."""
    if tuple(images.shape[1:3]) == (height, width):
        return images
    x = images.permute(0, 3, 1, 2)
    shrink = height <= x.shape[2] and width <= x.shape[3]
    x = F.interpolate(x, (height, width), mode="area") if shrink else F.interpolate(
        x, (height, width), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1)


class PseudoViews:
    """A pseudo-view set loaded once, with rays and colours precomputed at the render size."""

    def __init__(self, folder: str, height: int, width: int, rays_d_normalize: bool = True) -> None:
        from ..core.pseudo_views import read_pseudo_views

        views = read_pseudo_views(folder)
        # the stored c2w and fovy, at the size stage 3 renders: same camera, fewer pixels
        self.batch = views.camera_batch(height, width)
        self.batch["rays_o"], self.batch["rays_d"] = cameras.camera_rays(self.batch, normalize=rays_d_normalize)
        self.batch["rgb"] = _resize_hwc(views.images, height, width)
        if views.masks is not None:
            self.batch["mask"] = _resize_hwc(views.masks, height, width)
        self.names = views.names
        self.folder = views.folder

    def __len__(self) -> int:
        return len(self.names)

    def get(self, index: int) -> Dict[str, Any]:
        """One view as a batch of one, the shapes threestudio's renderer takes."""
        out = {k: (v[index : index + 1] if isinstance(v, torch.Tensor) else v) for k, v in self.batch.items()}
        out["index"] = torch.tensor([index])
        return out


class PseudoMultiviewIterableDataset(RandomCameraIterableDataset):
    def __init__(self, cfg: PseudoMultiviewDataModuleConfig, pseudo_views: Optional[PseudoViews]) -> None:
        super().__init__(cfg)
        self.pseudo_views = pseudo_views

    def collate(self, batch) -> Dict[str, Any]:
        out = super().collate(batch)
        if self.pseudo_views is not None:
            out["pseudo"] = self.pseudo_views.get(random.randrange(len(self.pseudo_views)))
        return out


@threestudio.register("pseudo-multiview-datamodule")
class PseudoMultiviewDataModule(RandomCameraDataModule):
    cfg: PseudoMultiviewDataModuleConfig
    config_class = PseudoMultiviewDataModuleConfig  # a subclass's wider config parses here

    def __init__(self, cfg: Optional[dict] = None) -> None:
        # skip RandomCameraDataModule.__init__: it parses cfg with its own (narrower) config class
        super(RandomCameraDataModule, self).__init__()
        self.cfg = parse_structured(self.config_class, cfg)
        if self.cfg.test_cameras not in TEST_CAMERAS:
            raise ValueError(f"data.test_cameras must be one of {', '.join(TEST_CAMERAS)}, not {self.cfg.test_cameras!r}")

    def load_pseudo_views(self) -> Optional[PseudoViews]:
        if not self.cfg.pseudo_views_dir:
            return None
        first = lambda v: v if isinstance(v, int) else v[0]  # noqa: E731
        return PseudoViews(
            self.cfg.pseudo_views_dir,
            self.cfg.pseudo_view_height or first(self.cfg.height),
            self.cfg.pseudo_view_width or first(self.cfg.width),
            self.cfg.rays_d_normalize,
        )

    def setup(self, stage=None) -> None:
        if stage in [None, "fit"]:
            self.train_dataset = PseudoMultiviewIterableDataset(self.cfg, self.load_pseudo_views())
        if stage in [None, "fit", "validate"]:
            self.val_dataset = OrbitDataset(self.cfg, "val")
        if stage in [None, "test", "predict"]:
            self.test_dataset = OrbitDataset(self.cfg, "test")
