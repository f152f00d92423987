"""Named settings for ``dreambooth3d run --preset``: the real run and the CPU smoke run.

``default`` is the paper-scale run on a GPU with our starting defaults, to be tuned on a GPU (DreamBooth
800 steps with the "partial" checkpoint at 200, 10k SDS steps per NeRF stage). Stage
hyperparameters live in the threestudio configs, as a threestudio user expects; a preset
only picks the configs and adds dotlist overrides.

``smoke`` runs every stage on a CPU in a few minutes with the tiny random SD from
``threestudio_dreambooth3d.tiny_models.sd`` and the same configs, scaled down only by the
overrides of :mod:`threestudio_dreambooth3d.pipeline.smoke`: a set-up check before spending GPU
hours, and what the end-to-end test runs. Its pictures are noise by design.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import smoke
from ..defaults import DEFAULT_MODEL
from ..errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    # base model; None = build the tiny random SD into OUT/models/tiny-sd
    model: Optional[str]
    # a CPU run: finetune on the CPU, no GPU required (launch.py runs through cpu.compat on every machine)
    cpu: bool
    # DreamBooth: steps, the step of the early "partial" checkpoint, the multi-view continuation
    finetune_steps: int
    partial_step: int
    multiview_steps: int
    num_class_images: int
    finetune_args: List[str] = field(default_factory=list)  # extra `dreambooth3d finetune` options
    # the first run's checkpoint the multi-view DreamBooth continues: "partial" (paper Fig. 2:
    # "we further fine-tune the partial DreamBooth using multi-view images") or "full"
    multiview_init: str = "partial"
    # threestudio config file (under configs/) per stage, and dotlist overrides per step
    configs: Dict[str, str] = field(default_factory=dict)
    overrides: Dict[str, List[str]] = field(default_factory=dict)


STAGE_CONFIGS = {
    "stage1": "dreambooth3d-stage1.yaml",
    "stage2": "dreambooth3d-stage2.yaml",
    "stage3": "dreambooth3d-stage3.yaml",
}

PRESETS: Dict[str, Preset] = {
    "default": Preset(
        name="default",
        description="the real run on a GPU (hours): Stable Diffusion, paper-scale step counts",
        model=DEFAULT_MODEL,
        cpu=False,
        finetune_steps=800,
        partial_step=200,
        # continues from the partial model (200 steps in), so fewer steps than the first run; to tune on a GPU
        multiview_steps=400,
        num_class_images=200,
        configs=dict(STAGE_CONFIGS),
    ),
    "smoke": Preset(
        name="smoke",
        description="every stage on the CPU in minutes with a tiny random model (checks the set-up, not the quality)",
        model=None,
        cpu=True,
        finetune_steps=4,
        partial_step=2,
        multiview_steps=2,
        num_class_images=2,
        configs=dict(STAGE_CONFIGS),
        # the real configs, scaled down (render size, steps, views, isosurface grid, texture); the
        # Latent-NeRF baseline's renders at its latent size; the MVDream prior's 4-view stages
        overrides={key: smoke.overrides(key) for key in ("stage1", "stage2", "stage3", "export", "latentnerf", "mvdream")},
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
