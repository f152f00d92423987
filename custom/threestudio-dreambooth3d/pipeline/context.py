"""One pipeline run's options and the layout of its output folder.

::

    OUT/manifest.json               finished steps, their inputs and outputs
    OUT/summary.html, SUMMARY.md    pictures, videos, mesh links, the exact commands
    OUT/results/                    turntable videos, pseudo-view contact sheet, mesh/ (OBJ, MTL, texture, GLB)
    OUT/finetune/checkpoints/{partial,full}        DreamBooth checkpoints
    OUT/multiview_finetune/checkpoints/multiview   DreamBooth continued on the pseudo views
    OUT/mv_finetune/checkpoints/partial            --prior mvdream: the multi-view DreamBooth on the photos
    OUT/models/mvdream              --prior mvdream: the converted MVDream folder (tiny-mvdream: smoke)
    OUT/{stage1,stage2,stage3,export}/run/         threestudio trials (ckpts/, save/, configs/parsed.yaml)
    OUT/pseudo_views/               the stage-2 pseudo-view set (images/view_XXX.png + .txt captions)
    OUT/{stage2,multiview_finetune,stage3}_rK/, OUT/pseudo_views_rK/   round K >= 2 of `run --rounds`
    OUT/class_images/               prior-preservation images, shared by both finetunes
    OUT/logs/                       each command's full output
    OUT/.threestudio/               the working folder launch.py runs in (custom/ and load/ links)
"""
from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .presets import Preset
from ..errors import ConfigError
from ..formats import slug

# fixed threestudio tag with use_timestamp=false: trial folders at a known place
TRIAL_TAG = "run"
# checkpoints of the first finetune the multi-view one may continue
MULTIVIEW_INITS = ("partial", "full")
# `dreambooth3d run --method`: DreamBooth3D's three stages, or one of the paper's baselines (a single
# NeRF step, "baseline", on the fully trained DreamBooth with that method's config)
METHODS = ("dreambooth3d", "dreamboothfusion", "latentnerf")
BASELINE_CONFIGS = {"dreamboothfusion": "dreamboothfusion-baseline.yaml",
                    "latentnerf": "latentnerf-dreambooth-baseline.yaml"}


def round_step(base: str, round: int) -> str:
    """The name (step, folder) of ``base`` in bootstrapping round ``round``: round 1 keeps the
    plain name, so a one-round run is laid out as before; later rounds add ``_rK``."""
    return base if round == 1 else f"{base}_r{round}"


def split_round(name: str):
    """``"stage3_r2"`` -> ``("stage3", 2)``; a plain name is round 1."""
    m = re.fullmatch(r"(.+)_r([0-9]+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, 1)


# `dreambooth3d run --prior`: the diffusion prior of stages 1 and 3. sd: the personalised Stable
# Diffusion (the paper); mvdream: the personalised MVDream multi-view model (stage 2's
# translation stays with the 2D full DreamBooth)
PRIORS = ("sd", "mvdream")
MVDREAM_CONFIGS = {"stage1": "dreambooth3d-mvdream-stage1.yaml", "stage3": "dreambooth3d-mvdream-stage3.yaml"}


@dataclass
class RunContext:
    out: Path
    subject: Path
    class_noun: str
    prompt: str
    preset: Preset
    model: str
    identifier: str = "sks"
    gpu: str = "0"
    seed: int = 0
    threestudio_root: Optional[Path] = None
    configs_dir: Optional[Path] = None
    # user dotlist overrides per step ("stage1" -> ["system.guidance.guidance_scale=50"])
    overrides: Dict[str, List[str]] = field(default_factory=dict)
    python: str = sys.executable
    # the first run's checkpoint the multi-view finetune continues (None: the preset's, "partial")
    multiview_init: Optional[str] = None
    method: str = "dreambooth3d"
    # bootstrapped rounds of stage 2 -> multi-view finetune -> stage 3 (DreamCraft3D's bootstrapping)
    rounds: int = 1
    prior: str = "sd"
    # --prior mvdream: a converted MVDream folder, or a released checkpoint file to convert (None: the
    # hub's MVDream/MVDream checkpoint; the smoke preset's tiny random one)
    mvdream: Optional[str] = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"--rounds must be a whole number >= 1, not {self.rounds!r}")
        if self.rounds > 1 and self.method != "dreambooth3d":
            raise ConfigError(f"--rounds repeats DreamBooth3D's stages 2-3; --method {self.method} has none. "
                              "Leave --rounds out for a baseline.")
        if self.prior not in PRIORS:
            raise ConfigError(f"prior must be one of {', '.join(PRIORS)}, not {self.prior!r}")
        if self.prior == "mvdream" and self.method != "dreambooth3d":
            raise ConfigError(f"--prior mvdream replaces the prior of DreamBooth3D's stages 1 and 3; "
                              f"--method {self.method} has none (use --method dreambooth3d)")
        self.multiview_init = self.multiview_init or self.preset.multiview_init
        if self.multiview_init not in MULTIVIEW_INITS:
            raise ConfigError(f"multiview_init must be one of {', '.join(MULTIVIEW_INITS)}, not {self.multiview_init!r}")
        self.out = Path(self.out).resolve()
        self.subject = Path(self.subject).resolve()

    # -- DreamBooth --------------------------------------------------------------------
    @property
    def finetune_dir(self) -> Path:
        return self.out / "finetune"

    @property
    def multiview_dir(self) -> Path:
        return self.out / "multiview_finetune"

    def checkpoint(self, name: str, round: int = 1) -> Path:
        """A DreamBooth checkpoint: partial/full of the first finetune, or round ``round``'s multiview."""
        folder = self.out / round_step("multiview_finetune", round) if name == "multiview" else self.finetune_dir
        return folder / "checkpoints" / name

    @property
    def mv_finetune_dir(self) -> Path:
        return self.out / "mv_finetune"

    def mv_checkpoint(self, name: str) -> Path:
        """A checkpoint of the multi-view DreamBooth on the photos (--prior mvdream)."""
        return self.mv_finetune_dir / "checkpoints" / name

    @property
    def mvdream_model(self) -> Path:
        """The MVDream folder the multi-view steps load: --mvdream FOLDER itself, else the folder
        the mvdream_model step converts into (or the smoke preset builds)."""
        if self.mvdream and Path(self.mvdream).expanduser().is_dir():
            return Path(self.mvdream).expanduser().resolve()
        tiny = self.preset.model is None and not self.mvdream
        return self.out / "models" / ("tiny-mvdream" if tiny else "mvdream")

    @property
    def mvdream_source(self) -> Optional[str]:
        """What the mvdream_model step converts: a checkpoint file, ``REPO:FILE`` on the hub, or None
        (a folder given, or the smoke preset's tiny model)."""
        from ..defaults import MVDREAM_FILE, MVDREAM_REPO

        if self.mvdream:
            path = Path(self.mvdream).expanduser()
            return None if path.is_dir() else str(path.resolve())
        return None if self.preset.model is None else f"{MVDREAM_REPO}:{MVDREAM_FILE}"

    @property
    def mv_class_images_dir(self) -> Path:
        """The multi-view class sets (sampled by the MVDream model itself), apart from the 2D ones."""
        key = hashlib.sha256(self.portable(str(self.mvdream_model)).encode()).hexdigest()[:8]
        return self.out / "class_images" / f"mv-{slug(self.class_noun)}-{key}"

    @property
    def class_images_dir(self) -> Path:
        # keyed by what the class images depend on: the trainer reuses whatever the folder holds
        key = hashlib.sha256(self.portable(self.model).encode()).hexdigest()[:8]
        return self.out / "class_images" / f"{slug(self.class_noun)}-{key}"

    @property
    def instance_prompt(self) -> str:
        return f"a {self.identifier} {self.class_noun}"

    # -- threestudio -------------------------------------------------------------------
    @property
    def workspace(self) -> Path:
        return self.out / ".threestudio"

    def trial_dir(self, step: str) -> Path:
        # launch.py: exp_root_dir/name/tag (+timestamp, which we switch off)
        return self.out / step / TRIAL_TAG

    def last_ckpt(self, step: str) -> Path:
        return self.trial_dir(step) / "ckpts" / "last.ckpt"

    def save_dir(self, step: str) -> Path:
        return self.trial_dir(step) / "save"

    def parsed_config(self, step: str) -> Path:
        return self.trial_dir(step) / "configs" / "parsed.yaml"

    @property
    def final_nerf_step(self) -> str:
        """The step whose NeRF is the method's result (exported, evaluated): the last round's stage 3."""
        return round_step("stage3", self.rounds) if self.method == "dreambooth3d" else "baseline"

    def stage_config(self, step: str) -> str:
        """The config file (under configs/) of a threestudio step of this run's method and prior."""
        if step == "baseline":
            return BASELINE_CONFIGS[self.method]
        if self.prior == "mvdream" and step in MVDREAM_CONFIGS:
            return MVDREAM_CONFIGS[step]
        return self.preset.configs[step]

    @property
    def pseudo_views_dir(self) -> Path:
        return self.pseudo_views_for(1)

    def pseudo_views_for(self, round: int) -> Path:
        return self.out / round_step("pseudo_views", round)

    # -- browsing ----------------------------------------------------------------------
    @property
    def results_dir(self) -> Path:
        return self.out / "results"

    @property
    def mesh_dir(self) -> Path:
        return self.results_dir / "mesh"

    @property
    def logs_dir(self) -> Path:
        return self.out / "logs"

    def portable(self, text: str) -> str:
        """``text`` with the output folder and threestudio's location as ``$OUT``/``$THREESTUDIO``,
        so a moved folder does not count as changed inputs."""
        text = text.replace(str(self.out), "$OUT")
        return text.replace(str(self.threestudio_root), "$THREESTUDIO") if self.threestudio_root else text

    def rel(self, path: Path) -> str:
        """A path inside the output folder as the manifest and summary store it."""
        return Path(path).resolve().relative_to(self.out).as_posix()
