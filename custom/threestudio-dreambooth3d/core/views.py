"""View names for view-dependent prompts, decided exactly as threestudio decides them.

threestudio's prompt processor (``DirectionConfig`` in
``threestudio/models/prompt_processors/base.py``) labels every camera "side", then
overrides with "front" for ``|azimuth| < front_threshold``, "back" for
``|azimuth| > 180 - back_threshold`` (azimuth wrapped to [-180, 180)) and "overhead"
for ``elevation > overhead_threshold``, all strict. Its ``view_dependent_prompt_front``
picks the prompt style: suffix ``"a sks dog, back view"`` (default) or prefix
``"backside view of a sks dog"``.

:class:`ViewPrompts` carries those four settings; :meth:`ViewPrompts.from_config` reads
them from a ``system.prompt_processor`` config, so stage 2's translation prompts and
pseudo-view captions name each camera exactly as stage 3's SDS prompts do (one source
of truth: the prompt processor's config).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, List, Mapping, Union

import torch

# threestudio's direction order: the index a camera gets is the position here
VIEWS = ("side", "front", "back", "overhead")
FRONT_THRESHOLD = 45.0
BACK_THRESHOLD = 45.0
OVERHEAD_THRESHOLD = 60.0


def shift_azimuth_deg(azimuth: torch.Tensor) -> torch.Tensor:
    """Azimuth wrapped to [-180, 180)."""
    return (azimuth + 180) % 360 - 180


def view_indices(elevation_deg, azimuth_deg, front_threshold: float = FRONT_THRESHOLD,
                 back_threshold: float = BACK_THRESHOLD,
                 overhead_threshold: float = OVERHEAD_THRESHOLD) -> torch.Tensor:
    """Index into :data:`VIEWS` per camera, threestudio's ``direction_idx``."""
    ele, azi = torch.broadcast_tensors(torch.as_tensor(elevation_deg, dtype=torch.float32),
                                       torch.as_tensor(azimuth_deg, dtype=torch.float32))
    azi = shift_azimuth_deg(azi)
    idx = torch.zeros(ele.shape, dtype=torch.long)  # side
    idx[(azi > -front_threshold) & (azi < front_threshold)] = VIEWS.index("front")
    idx[(azi > 180 - back_threshold) | (azi < -180 + back_threshold)] = VIEWS.index("back")
    idx[ele > overhead_threshold] = VIEWS.index("overhead")
    return idx


def view_name(elevation_deg: float, azimuth_deg: float, **thresholds) -> str:
    """"front", "side", "back" or "overhead" for one camera."""
    return VIEWS[int(view_indices(float(elevation_deg), float(azimuth_deg), **thresholds))]


def view_names(elevation_deg, azimuth_deg, **thresholds) -> List[str]:
    """View names for a batch of cameras (e.g. a camera batch's elevation/azimuth)."""
    return [VIEWS[i] for i in view_indices(elevation_deg, azimuth_deg, **thresholds).reshape(-1).tolist()]


# threestudio's prefix style (view_dependent_prompt_front: true); note "backside", not "back"
PREFIXES = {"side": "side view of", "front": "front view of", "back": "backside view of", "overhead": "overhead view of"}


def view_prompt(base_prompt: str, view: Union[str, None], front: bool = False) -> str:
    """threestudio's view-dependent prompt: ``"a sks dog" + "back"`` -> ``"a sks dog, back view"``,
    or with ``front=True`` (its ``view_dependent_prompt_front``) ``"backside view of a sks dog"``.

    ``view=None`` returns the base prompt (view-dependent prompting off).
    """
    if view is None:
        return base_prompt
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    return f"{PREFIXES[view]} {base_prompt}" if front else f"{base_prompt}, {view} view"


@dataclass(frozen=True)
class ViewPrompts:
    """The view settings of a threestudio prompt processor (defaults are threestudio's)."""

    front_threshold: float = FRONT_THRESHOLD
    back_threshold: float = BACK_THRESHOLD
    overhead_threshold: float = OVERHEAD_THRESHOLD
    view_dependent_prompt_front: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> "ViewPrompts":
        """From a ``system.prompt_processor`` config (dict, DictConfig or dataclass); absent keys keep defaults."""
        get = cfg.get if isinstance(cfg, Mapping) or hasattr(cfg, "get") else lambda k, d: getattr(cfg, k, d)
        values = {}
        for f in fields(cls):
            v = get(f.name, None)
            if v is not None:
                values[f.name] = bool(v) if f.name == "view_dependent_prompt_front" else float(v)
        return cls(**values)

    @property
    def thresholds(self) -> dict:
        return {"front_threshold": self.front_threshold, "back_threshold": self.back_threshold,
                "overhead_threshold": self.overhead_threshold}

    def names(self, elevation_deg, azimuth_deg) -> List[str]:
        return view_names(elevation_deg, azimuth_deg, **self.thresholds)

    def prompt(self, base_prompt: str, view: Union[str, None]) -> str:
        return view_prompt(base_prompt, view, front=self.view_dependent_prompt_front)

    def prompts(self, base_prompt: str, elevation_deg, azimuth_deg) -> List[str]:
        """One view-dependent prompt per camera."""
        return [self.prompt(base_prompt, v) for v in self.names(elevation_deg, azimuth_deg)]
