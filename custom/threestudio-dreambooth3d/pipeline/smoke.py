"""The only keys a CPU run changes in the real stage configs (smoke preset, threestudio-tier tests).

Why this exists: there is one set of stage configs, the one a GPU user runs (hash grid,
SH environment map, 512 samples per ray, SD guidance and loss schedules). On a CPU the
pure-torch stand-ins (:mod:`..cpu.tinycudann`, :mod:`..cpu.nerfacc`) run them as they are; only
what scales the work down is overridden, and only here, so the smoke run and the tests
exercise every other key. docs/THREESTUDIO.md lists the set. Precision needs no key:
``cpu.compat`` runs ``16-mixed`` as fp32 and the guidance loads fp32 weights on a CPU. The
model path and checkpoints are the pipeline's usual keys.
"""
from __future__ import annotations

from typing import Dict, List

RENDER_SIZE = 32  # training and evaluation renders (the tiny SD's own image size)
TRAIN_STEPS = 2
TURNTABLE_VIEWS = 5  # azimuths 0, 90, 180, 270, 360: one back view, so the Janus score has a frame to judge

# every NeRF stage config (dreambooth3d-stage{1,2,3}.yaml, dreamboothfusion-baseline.yaml)
STAGE: List[str] = [
    # render resolution (the latent resolution follows the model)
    f"data.width={RENDER_SIZE}", f"data.height={RENDER_SIZE}",
    f"data.eval_width={RENDER_SIZE}", f"data.eval_height={RENDER_SIZE}",
    # steps: training steps, validation once at the end, a short turntable
    f"trainer.max_steps={TRAIN_STEPS}", f"trainer.val_check_interval={TRAIN_STEPS}",
    "data.n_val_views=1", f"data.n_test_views={TURNTABLE_VIEWS}",
    # a 2^15-entry hash table per level (the configs' 2^19: 12.6M parameters, a 151 MB checkpoint with
    # Adam's state): the smoke output stays under 100 MB, and the CPU hash grid is faster
    "system.geometry.pos_encoding_config.log2_hashmap_size=15",
]

OVERRIDES: Dict[str, List[str]] = {
    "stage1": STAGE,
    # 4 pseudo views; img2img denoising steps
    "stage2": STAGE + ["data.n_test_views=4", "system.guidance.translation_steps=4"],
    "stage3": STAGE,
    # latentnerf-dreambooth-baseline.yaml: training renders are latents (16 x 16, the tiny SD's
    # latent size); evaluation renders at the image size, so decoded latents and opacity share
    # a size in the saved grids, as threestudio's 512 does for SD
    # latentnerf.yaml's geometry leaves pos_encoding_config to implicit-volume's default dict, which a
    # single-key override would replace whole (no otype): it keeps its 2^19 table
    "latentnerf": [f"data.width={RENDER_SIZE // 2}", f"data.height={RENDER_SIZE // 2}",
                   *[o for o in STAGE if not o.startswith(("data.width=", "data.height=",
                                                            "system.geometry.pos_encoding_config."))]],
    # --prior mvdream, after a stage's own (dreambooth3d-mvdream-stage{1,3}.yaml): one size and one
    # 4-view object per step instead of the 64 -> 256 px, 8 -> 4 views schedule; the guidance
    # resizes renders to the tiny MVDream's own 32 px
    "mvdream": ["data.batch_size=4", "data.resolution_milestones=[]"],
    # the export reads stage 3's parsed config: marching cubes on a 32^3 grid, a 64 px texture. A
    # 2-step NeRF is still the initial density blob, below threestudio's fixed threshold: "auto"
    # takes the mean density. Always CPU marching cubes: latentnerf.yaml (threestudio's) asks for
    # marching tetrahedra, whose load/tets grids a bare threestudio checkout may lack.
    "export": ["system.geometry.isosurface_method=mc-cpu",
               "system.geometry.isosurface_resolution=32", "system.geometry.isosurface_threshold=auto",
               "system.exporter.texture_size=64"],
}


def overrides(step: str) -> List[str]:
    """The CPU dotlist overrides of a pipeline step (``stage1``, ``stage2``, ``stage3``, ``export``,
    ``latentnerf`` for the Latent-NeRF baseline, ``mvdream`` added to the stages of --prior mvdream)."""
    return list(OVERRIDES.get(step, []))
