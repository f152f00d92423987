"""Pseudo-view filtering: score each translated view, drop the worst before anything learns from it.

Stage 2 translates stage-1 renders with the fully trained DreamBooth model. Some
translations go wrong in ways that later stages would learn as truth: a Janus stage-1
NeRF gives a "back view" that shows a face; img2img invents a different object or
moves the subject. Two scores catch these:

* **render difference** (needs no model): the translation should keep its render's
  layout and colours at low frequency (it was made from that render at a partial noise
  level). Both images are reduced to ``size`` x ``size`` by area averaging, i.e. low-passed,
  and compared by the mean absolute difference over the render's mask (its opacity, at
  the same size): 0 = the same coarse picture, 1 = opposite colours everywhere.
  Background outside the mask is not compared (the translation may change it freely).
* **subject similarity** (when an image encoder is given, CLIP-I or DINO as the
  evaluation uses them): the mean cosine similarity of the view's embedding to the
  subject photos' embeddings. A view of another object, or of the subject lost, scores low.

:func:`select_views` drops views above/below the thresholds, then the worst of the rest
until ``keep_fraction`` of all views remain (ranked by the mean of each score's rank, so
neither scale dominates). Each dropped view carries the reason that names its score.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass
class ViewFilterConfig:
    enabled: bool = True  # the one switch: false keeps every view, unscored
    keep_fraction: float = 0.75  # after the thresholds, keep this fraction of all views (1.0: thresholds only)
    max_render_difference: Optional[float] = None  # drop a view whose render difference is above this
    min_subject_similarity: Optional[float] = None  # drop a view less similar than this to the photos
    min_views: int = 4  # never keep fewer (the multi-view finetune and stage 3 need several views)
    size: int = 16  # low-pass resolution of the render difference
    subject_encoder: Optional[str] = None  # a CLIP or DINO folder (eval's --clip-models/--dino-model kind)
    subject_dir: Optional[str] = None  # the subject photos the encoder compares with

    def check(self) -> "ViewFilterConfig":
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ConfigError(f"pseudo_view_filter.keep_fraction must be in (0, 1], not {self.keep_fraction}")
        if self.min_views < 1:
            raise ConfigError(f"pseudo_view_filter.min_views must be at least 1, not {self.min_views}")
        if self.size < 1:
            raise ConfigError(f"pseudo_view_filter.size must be at least 1 pixel, not {self.size}")
        if bool(self.subject_encoder) != bool(self.subject_dir):
            raise ConfigError("pseudo_view_filter.subject_encoder and subject_dir go together: the encoder "
                              "compares each view with the photos in subject_dir. Set both, or neither.")
        return self

    @classmethod
    def from_dict(cls, values: Optional[Dict[str, Any]]) -> "ViewFilterConfig":
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"pseudo_view_filter.{unknown[0]} is not an option; options are "
                              f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**values).check()


@dataclass
class ViewDecision:
    index: int
    keep: bool
    render_difference: float
    subject_similarity: Optional[float] = None
    reason: Optional[str] = None  # why it was dropped

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def _nchw(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, H, W, C] (threestudio's layout) or [N, C, H, W] -> float [N, C, H, W]."""
    x = torch.as_tensor(x).float()
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[1] != channels and x.shape[-1] == channels:
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"expected [N, H, W, {channels}] or [N, {channels}, H, W], got {tuple(x.shape)}")
    return x


def render_difference(translated: torch.Tensor, renders: torch.Tensor, masks: Optional[torch.Tensor] = None,
                      size: int = 16) -> torch.Tensor:
    """[N] masked low-frequency mean absolute difference between each translation and its render
    (module docstring); images in [0, 1], masks in [0, 1] (None: the whole image)."""
    t, r = _nchw(translated, 3), _nchw(renders, 3)
    if t.shape != r.shape:
        raise ValueError(f"translated views {tuple(t.shape)} and renders {tuple(r.shape)} differ in shape")
    size = (min(size, t.shape[2]), min(size, t.shape[3]))
    lt, lr = F.adaptive_avg_pool2d(t, size), F.adaptive_avg_pool2d(r, size)
    if masks is None:
        w = torch.ones(t.shape[0], 1, *size)
    else:
        w = F.adaptive_avg_pool2d(_nchw(masks, 1), size)
    diff = (lt - lr).abs().mean(dim=1, keepdim=True)  # [N, 1, s, s]
    area = w.sum(dim=(1, 2, 3))
    out = (diff * w).sum(dim=(1, 2, 3)) / area.clamp_min(1e-6)
    # an empty mask (nothing rendered) is the worst agreement there is: nothing to check
    return torch.where(area > 1e-6, out, torch.ones_like(out))


def subject_similarity(view_emb: torch.Tensor, photo_emb: torch.Tensor) -> torch.Tensor:
    """[N] mean cosine similarity of each view embedding to the photo embeddings (CLIP-I / DINO per view)."""
    if len(photo_emb) == 0:
        raise ValueError("subject_similarity needs at least one photo embedding")
    return (F.normalize(view_emb.float(), dim=-1) @ F.normalize(photo_emb.float(), dim=-1).T).mean(dim=1)


def _ranks(values: torch.Tensor, descending: bool) -> torch.Tensor:
    """0 = best; ties share the better rank's order by index (stable)."""
    order = torch.sort(values, descending=descending, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(values))
    return ranks.float()


def select_views(render_diff: torch.Tensor, subject_sim: Optional[torch.Tensor],
                 cfg: ViewFilterConfig) -> List[ViewDecision]:
    """Keep or drop each view (module docstring). With ``cfg.enabled`` false every view is kept."""
    n = len(render_diff)
    rd = [float(v) for v in render_diff]
    ss = [float(v) for v in subject_sim] if subject_sim is not None else [None] * n
    decisions = [ViewDecision(i, True, rd[i], ss[i]) for i in range(n)]
    if not cfg.enabled or n == 0:
        return decisions
    floor = min(cfg.min_views, n)

    def kept() -> List[ViewDecision]:
        return [d for d in decisions if d.keep]

    # thresholds, worst first, never below the floor
    bad = []
    for d in decisions:
        if cfg.max_render_difference is not None and d.render_difference > cfg.max_render_difference:
            bad.append((d.render_difference - cfg.max_render_difference, d,
                        f"differs from its render: {d.render_difference:.3f} > {cfg.max_render_difference:g}"))
        elif (cfg.min_subject_similarity is not None and d.subject_similarity is not None
              and d.subject_similarity < cfg.min_subject_similarity):
            bad.append((cfg.min_subject_similarity - d.subject_similarity, d,
                        f"unlike the subject photos: {d.subject_similarity:.3f} < {cfg.min_subject_similarity:g}"))
    for _, d, why in sorted(bad, key=lambda b: -b[0]):
        if len(kept()) <= floor:
            break
        d.keep, d.reason = False, why

    # then the worst by mean rank until keep_fraction of all views remain
    target = max(floor, math.ceil(cfg.keep_fraction * n - 1e-9))
    rank_rd = _ranks(torch.tensor(rd), descending=False)  # small difference is good
    rank_ss = _ranks(torch.tensor([s for s in ss]), descending=True) if subject_sim is not None else None
    badness = rank_rd if rank_ss is None else (rank_rd + rank_ss) / 2
    for i in torch.sort(badness, descending=True, stable=True).indices.tolist():
        if len(kept()) <= target:
            break
        d = decisions[i]
        if not d.keep:
            continue
        parts = [f"render difference {d.render_difference:.3f} (rank {int(rank_rd[i]) + 1}/{n})"]
        if rank_ss is not None:
            parts.append(f"photo similarity {d.subject_similarity:.3f} (rank {int(rank_ss[i]) + 1}/{n})")
        d.keep, d.reason = False, f"among the worst {n - target} of {n}: " + ", ".join(parts)
    return decisions


def filter_report(decisions: Sequence[ViewDecision], cfg: ViewFilterConfig) -> Dict[str, Any]:
    """What ``filter.json`` holds: the settings, and every view's scores, verdict and reason."""
    return {"config": asdict(cfg), "kept": sum(d.keep for d in decisions), "total": len(decisions),
            "views": [d.to_json() for d in decisions]}


def filter_views(translated: torch.Tensor, renders: torch.Tensor, masks: Optional[torch.Tensor],
                 cfg: ViewFilterConfig, view_emb: Optional[torch.Tensor] = None,
                 photo_emb: Optional[torch.Tensor] = None) -> tuple:
    """Score every view and decide: ``(decisions, filter_report)``. Subject similarity needs both
    embeddings (the encoder's of the translated views and of the photos)."""
    if not cfg.enabled:
        n = len(translated)
        decisions = [ViewDecision(i, True, float("nan")) for i in range(n)]
        return decisions, filter_report(decisions, cfg)
    diff = render_difference(translated, renders, masks, cfg.size)
    sim = subject_similarity(view_emb, photo_emb) if view_emb is not None and photo_emb is not None else None
    decisions = select_views(diff, sim, cfg)
    return decisions, filter_report(decisions, cfg)
