"""``latent-rgb-material``: a Latent-NeRF's texture in RGB, for the mesh export.

A Latent-NeRF (``--method latentnerf``) stores 4 Stable Diffusion latent channels per point
and renders them with ``no-material``; exported as they are, the texture would hold latents
(threestudio's ``no-material`` export keeps the first three and clamps them). The export
swaps in this material: threestudio's ``sd-latent-adapter-material`` — Latent-NeRF's linear
latent-to-RGB approximation, the same matrix threestudio's ``latentnerf-refine`` starts
from — plus the ``export`` that the mesh exporter reads the albedo from. It has no weights
in the Latent-NeRF checkpoint, so the export loads that with ``system.weights`` (which
ignores missing keys) and the adapter keeps the published matrix.
"""
from dataclasses import dataclass
from typing import Any, Dict

import threestudio
from threestudio.models.materials.sd_latent_adapter_material import StableDiffusionLatentAdapterMaterial

NAME = "latent-rgb-material"


@threestudio.register(NAME)
class LatentRGBMaterial(StableDiffusionLatentAdapterMaterial):
    @dataclass
    class Config(StableDiffusionLatentAdapterMaterial.Config):
        # no-material's keys, which a latentnerf config's material block carries: accepted, unused
        n_output_dims: int = 4
        color_activation: str = "none"

    cfg: Config

    def export(self, features, **kwargs) -> Dict[str, Any]:
        return {"albedo": self(features)}  # the adapter's forward: latents -> RGB in [0, 1]
