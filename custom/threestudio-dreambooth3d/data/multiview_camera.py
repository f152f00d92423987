"""``dreambooth-multiview-camera-datamodule``: MVDream's 4-view training batches, plus pseudo views.

Training batches hold ``batch_size / n_view`` objects of ``n_view`` cameras each (core
:func:`~..core.cameras.multiview_cameras`: equal azimuth gaps, one elevation/fovy/distance
per object, ``relative_radius`` as MVDream-threestudio's ``random-multiview-camera-datamodule``),
at threestudio's progressive sizes (``height``/``width``/``batch_size`` lists switched at
``resolution_milestones``, e.g. 64 px x 8 then 256 px x 4). Everything else is
``pseudo-multiview-datamodule``'s: ``batch["pseudo"]`` (one stage-2 pseudo view per step)
when ``pseudo_views_dir`` is set, orbit or random val/test cameras.
"""
from __future__ import annotations

from dataclasses import dataclass
import random
from typing import Any, Dict, Optional

import threestudio

from ..core import cameras
from ..core.view_batches import CameraDataset
from ..errors import ConfigError
from .pseudo_multiview import PseudoMultiviewDataModule, PseudoMultiviewDataModuleConfig, PseudoMultiviewIterableDataset


@dataclass
class MultiviewCameraDataModuleConfig(PseudoMultiviewDataModuleConfig):
    n_view: int = 4
    # camera_distance_range is relative to the fovy (distance * 1 / tan(fovy / 2)), as MVDream's
    relative_radius: bool = True


class MultiviewCameraIterableDataset(PseudoMultiviewIterableDataset):
    cfg: MultiviewCameraDataModuleConfig

    def collate(self, batch) -> Dict[str, Any]:
        n_objects = self.batch_size // self.cfg.n_view
        views = cameras.multiview_cameras(
            n_objects, self.cfg.n_view, tuple(self.elevation_range), tuple(self.azimuth_range),
            tuple(self.camera_distance_range), tuple(self.fovy_range), self.cfg.relative_radius,
            self.height, self.width, tuple(self.cfg.light_distance_range), self.cfg.light_position_perturb,
        )
        views["rays_o"], views["rays_d"] = cameras.camera_rays(views, normalize=self.cfg.rays_d_normalize)
        if self.pseudo_views is not None:
            views["pseudo"] = self.pseudo_views.get(random.randrange(len(self.pseudo_views)))
        return views


@threestudio.register("dreambooth-multiview-camera-datamodule")
class MultiviewCameraDataModule(PseudoMultiviewDataModule):
    cfg: MultiviewCameraDataModuleConfig

    config_class = MultiviewCameraDataModuleConfig

    def __init__(self, cfg: Optional[dict] = None) -> None:
        super().__init__(cfg)
        b = self.cfg.batch_size
        sizes = [b] if isinstance(b, int) else list(b)
        if self.cfg.n_view < 1 or any(size % self.cfg.n_view for size in sizes):
            raise ConfigError(f"data.batch_size {sizes} must be multiples of data.n_view={self.cfg.n_view}: "
                              "a batch holds whole objects of n_view views")

    def setup(self, stage=None) -> None:
        if stage in [None, "fit"]:
            self.train_dataset = MultiviewCameraIterableDataset(self.cfg, self.load_pseudo_views())
        if stage in [None, "fit", "validate"]:
            self.val_dataset = CameraDataset(self.cfg, "val")
        if stage in [None, "test", "predict"]:
            self.test_dataset = CameraDataset(self.cfg, "test")
