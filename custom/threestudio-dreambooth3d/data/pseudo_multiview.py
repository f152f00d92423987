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

import threestudio
from threestudio.data.uncond import (
    RandomCameraDataModule,
    RandomCameraDataModuleConfig,
    RandomCameraIterableDataset,
)
from threestudio.utils.config import parse_structured

from ..core.view_batches import CameraDataset, PseudoViews, check_test_cameras


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
        check_test_cameras(self.cfg.test_cameras)

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
            self.val_dataset = CameraDataset(self.cfg, "val")
        if stage in [None, "test", "predict"]:
            self.test_dataset = CameraDataset(self.cfg, "test")
