"""Registers the threestudio adapters: ``dreambooth-sds-guidance``, ``dreambooth-prompt-processor``,
``pseudo-multiview-datamodule``, ``dreambooth3d-system`` and ``latent-rgb-material`` (the
texture of a Latent-NeRF baseline's mesh export); for the MVDream prior
``dreambooth-mvdream-guidance``, ``dreambooth-multiview-camera-datamodule`` and
``dreambooth-mixed-guidance`` (2D + multi-view SDS, a weight each).

Nothing registers on import of :mod:`threestudio_dreambooth3d`: the core never imports
threestudio. :func:`register` runs when threestudio's launch.py loads ``custom/`` (the
package ``__init__`` under its folder name), when ``cpu.compat.enable()`` has made
threestudio importable (on a CPU, or without its CUDA extensions), or when a user calls it.
"""


def register() -> None:
    """Import the adapter modules so their ``@threestudio.register`` decorators run (idempotent)."""
    from .data import multiview_camera, pseudo_multiview  # noqa: F401
    from .guidance import dreambooth_sds_guidance, mixed_guidance, mvdream_guidance  # noqa: F401
    from .materials import latent_rgb_material  # noqa: F401
    from .prompt_processors import dreambooth_prompt_processor  # noqa: F401
    from .systems import dreambooth3d_system  # noqa: F401
