"""The batches of ``pseudo-multiview-datamodule``, without threestudio: the val/test cameras
(an orbit, or random viewpoints for stage 2) and a pseudo-view set with its rays and colours
at the render size. The datamodule (data/pseudo_multiview.py) adds threestudio's random
training cameras and draws one pseudo view per step.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import cameras
from .pseudo_views import read_pseudo_views

TEST_CAMERAS = ("orbit", "random")


def check_test_cameras(kind: str) -> None:
    if kind not in TEST_CAMERAS:
        raise ValueError(f"data.test_cameras must be one of {', '.join(TEST_CAMERAS)}, not {kind!r}")


def eval_cameras(cfg: Any, split: str) -> Dict[str, Any]:
    """The camera batch of the val or test split. ``cfg``: the datamodule's config (any object
    with its keys, see data/pseudo_multiview.py)."""
    check_test_cameras(cfg.test_cameras)
    if split == "test" and cfg.test_cameras == "random":
        return cameras.random_cameras(
            cfg.n_test_views, tuple(cfg.elevation_range), tuple(cfg.azimuth_range), tuple(cfg.camera_distance_range),
            tuple(cfg.fovy_range), cfg.eval_height, cfg.eval_width, seed=cfg.test_camera_seed,
            uniform_azimuth=cfg.batch_uniform_azimuth)
    n = cfg.n_val_views if split == "val" else cfg.n_test_views
    elevations = list(cfg.eval_elevations_deg or [cfg.eval_elevation_deg])
    return cameras.orbit_cameras(n, elevations, cfg.eval_camera_distance, cfg.eval_fovy_deg,
                                 cfg.eval_height, cfg.eval_width)


class CameraDataset(Dataset):
    """The val/test cameras, one per item: an orbit, or random viewpoints (``test_cameras``)."""

    def __init__(self, cfg: Any, split: str) -> None:
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


def resize_hwc(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
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
        views = read_pseudo_views(folder)
        # the stored c2w and fovy, at the size stage 3 renders: same camera, fewer pixels
        self.batch = views.camera_batch(height, width)
        self.batch["rays_o"], self.batch["rays_d"] = cameras.camera_rays(self.batch, normalize=rays_d_normalize)
        self.batch["rgb"] = resize_hwc(views.images, height, width)
        if views.masks is not None:
            self.batch["mask"] = resize_hwc(views.masks, height, width)
        self.names = views.names
        self.folder = views.folder

    def __len__(self) -> int:
        return len(self.names)

    def get(self, index: int) -> Dict[str, Any]:
        """One view as a batch of one, the shapes threestudio's renderer takes."""
        out = {k: (v[index : index + 1] if isinstance(v, torch.Tensor) else v) for k, v in self.batch.items()}
        out["index"] = torch.tensor([index])
        return out
