"""View names for view-dependent prompts, decided exactly as threestudio decides them.

threestudio's prompt processor (``DirectionConfig`` in
``threestudio/models/prompt_processors/base.py``) labels every camera "side", then
overrides with "front" for ``|azimuth| < front_threshold``, "back" for
``|azimuth| > 180 - back_threshold`` (azimuth wrapped to [-180, 180)) and "overhead"
for ``elevation > overhead_threshold``, all strict. Stage 2 captions pseudo views with
the same names, so a pseudo view and the SDS prompt at its camera agree.
"""
from __future__ import annotations

from typing import List, Union

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


def view_prompt(base_prompt: str, view: Union[str, None]) -> str:
    """threestudio's suffix form: ``"a sks dog" + "back"`` -> ``"a sks dog, back view"``.

    ``view=None`` returns the base prompt (view-dependent prompting off).
    """
    if view is None:
        return base_prompt
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    return f"{base_prompt}, {view} view"
