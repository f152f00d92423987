"""``dreambooth-mixed-guidance``: the 2D DreamBooth SDS and the multi-view MVDream SDS on the same
multi-view batch, each loss under its own weight.

Holds a ``dreambooth-sds-guidance`` (``sd_guidance``, the personalised Stable Diffusion) and a
``dreambooth-mvdream-guidance`` (``mv_guidance``, the personalised MVDream) and returns both
outputs with their names suffixed (core :func:`~..core.mvsds.mix_guidance_outputs`):
``loss_sds_2d`` and ``loss_sds_mv``, which the system weighs by ``system.loss.lambda_sds_2d``
and ``system.loss.lambda_sds_mv`` (``C()`` values: either may be scheduled or 0).

Each model gets embeddings from its own text encoder: the system's prompt processor (built from
the MVDream checkpoint) serves the multi-view guidance; ``sd_prompt_processor`` (a
``dreambooth-prompt-processor`` on the 2D checkpoint) the 2D one. threestudio's
update_step reaches both sub-guidances (t-range and grad-clip schedules) through this object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

import threestudio
from threestudio.models.prompt_processors.base import PromptProcessorOutput
from threestudio.utils.base import BaseObject

from ..core.mvsds import mix_guidance_outputs


@threestudio.register("dreambooth-mixed-guidance")
class DreamBoothMixedGuidance(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        sd_guidance_type: str = "dreambooth-sds-guidance"
        sd_guidance: dict = field(default_factory=dict)
        sd_prompt_processor_type: str = "dreambooth-prompt-processor"
        sd_prompt_processor: dict = field(default_factory=dict)
        mv_guidance_type: str = "dreambooth-mvdream-guidance"
        mv_guidance: dict = field(default_factory=dict)

    cfg: Config

    def configure(self) -> None:
        self.sd = threestudio.find(self.cfg.sd_guidance_type)(self.cfg.sd_guidance)
        self.mv = threestudio.find(self.cfg.mv_guidance_type)(self.cfg.mv_guidance)
        self.sd_prompt_processor = threestudio.find(self.cfg.sd_prompt_processor_type)(self.cfg.sd_prompt_processor)

    def __call__(self, rgb, prompt_utils: PromptProcessorOutput, **kwargs) -> Dict[str, Any]:
        outputs = {
            "2d": self.sd(rgb, self.sd_prompt_processor(), **kwargs),
            "mv": self.mv(rgb, prompt_utils, **kwargs),
        }
        return mix_guidance_outputs(outputs)
