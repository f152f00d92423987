"""The command lines the pipeline runs: ``dreambooth3d finetune`` and threestudio's launch.py.

Every stage goes through threestudio's own ``launch.py`` with our configs and dotlist
overrides, so what a threestudio user knows (resume=, trainer.max_steps=, --gpu, the
trial folder layout) still applies, and the summary can show commands a user can rerun
by hand. launch.py loads extensions from ``./custom`` and threestudio's assets from
``./load`` relative to its working folder; we run it in ``OUT/.threestudio``, which
links both (see :func:`prepare_workspace`), and set ``exp_root_dir``/``name``/``tag``
with ``use_timestamp=false`` so trial folders land at ``OUT/<step>/run``.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import yaml

from ..errors import ConfigError, MissingFileError
from ..threestudio_root import THREESTUDIO_HELP, ThreestudioNotFoundError, locate_threestudio  # noqa: F401 (re-exported)
from .context import TRIAL_TAG, RunContext

PACKAGE_DIR = Path(__file__).resolve().parents[1]
EXTENSION_NAME = "threestudio-dreambooth3d"  # the folder name launch.py sees under custom/

# dotlist keys of our configs (see their headers); one place to change them. The prompt
# processor interpolates its model and checkpoint from system.guidance.
KEYS = {
    "model": "system.guidance.pretrained_model_name_or_path",
    "checkpoint": "system.guidance.checkpoint",  # a checkpoint folder (holding dreambooth.json)
    "prompt": "system.prompt_processor.prompt",
    "pseudo_views_out": "system.pseudo_views_dir",  # stage 2 writes the pseudo-view set here
    # stage 2 captions/translation prompts: the subject ("a sks dog, back view"), not the
    # scene prompt, so the multi-view DreamBooth learns the subject's views (DESIGN.md)
    "translation_prompt": "system.translation_prompt",
    "pseudo_views_in": "data.pseudo_views_dir",  # stage 3 reads it
    "init_weights": "system.weights",  # stage 3 starts from the stage-1 NeRF
}



@dataclass
class Command:
    argv: List[str]
    cwd: Path
    env: Dict[str, str] = field(default_factory=dict)  # added to the caller's environment
    log_name: str = "command"

    def shell(self) -> str:
        """The command as one line a user can paste into a shell."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"cd {shlex.quote(str(self.cwd))} && " + (env + " " if env else "") + shlex.join(self.argv)


def locate_configs(explicit: Optional[Union[str, Path]] = None) -> Path:
    """Our threestudio configs: ``explicit``, else the copy installed inside the package (pip install .,
    a wheel: setup.py ships configs/ as package data), else the checkout's ``configs/`` next to ``custom/``."""
    if explicit:
        candidates = [Path(explicit).expanduser().resolve()]
    else:
        candidates = [PACKAGE_DIR / "configs", PACKAGE_DIR.parents[1] / "configs"]
    folder = next((c for c in candidates if c.is_dir()), candidates[-1])
    if not folder.is_dir():
        raise MissingFileError(
            f"threestudio configs folder {folder} not found. Reinstall threestudio-dreambooth3d "
            "(its package carries the configs) or pass --configs DIR."
        )
    return folder


def prepare_workspace(ctx: RunContext) -> Path:
    """``OUT/.threestudio`` with ``custom/threestudio-dreambooth3d`` -> this package and ``load`` -> threestudio's."""
    ws = ctx.workspace
    (ws / "custom").mkdir(parents=True, exist_ok=True)
    links = {ws / "custom" / EXTENSION_NAME: PACKAGE_DIR}
    if ctx.threestudio_root is not None and (ctx.threestudio_root / "load").is_dir():
        links[ws / "load"] = ctx.threestudio_root / "load"  # isosurface tets, lights, prompt library
    for link, target in links.items():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return ws


def first_finetune_choices(ctx: RunContext) -> List[str]:
    """The first finetune's ``--mode`` and ``--train-text-encoder``, for the multi-view finetune.

    The continuation trains what the first run trained (a full UNet stays full, a trained text
    encoder keeps training); its own ``--set multiview_finetune:...`` options come later and win.
    """
    from ..cli import build_parser

    first = finetune_command(ctx).argv[3:]  # after "python -m threestudio_dreambooth3d.cli"
    args = build_parser().parse_args(first)
    return ["--mode", args.mode] + (["--train-text-encoder"] if args.train_text_encoder else [])


def finetune_command(ctx: RunContext, multiview: bool = False) -> Command:
    """``dreambooth3d finetune``: partial + full from the photos, or the multi-view continuation."""
    p = ctx.preset
    argv = [ctx.python, "-m", "threestudio_dreambooth3d.cli", "finetune",
            "--subject", str(ctx.subject), "--class-noun", ctx.class_noun, "--model", ctx.model,
            "--identifier", ctx.identifier, "--num-class-images", str(p.num_class_images),
            "--class-images-dir", str(ctx.class_images_dir), "--seed", str(ctx.seed)]
    if multiview:
        argv += ["--out", str(ctx.multiview_dir), "--steps", str(p.multiview_steps),
                 "--checkpoints", f"multiview={p.multiview_steps}",
                 "--init-checkpoint", str(ctx.checkpoint(ctx.multiview_init)),
                 "--extra-images", str(ctx.pseudo_views_dir / "images")]
        argv += first_finetune_choices(ctx)
    else:
        argv += ["--out", str(ctx.finetune_dir), "--steps", str(p.finetune_steps),
                 "--checkpoints", f"partial={p.partial_step},full={p.finetune_steps}"]
    argv += ["--device", "cpu"] if p.cpu else []
    argv += list(p.finetune_args) + list(ctx.overrides.get("multiview_finetune" if multiview else "finetune", []))
    env = {} if p.cpu or "CUDA_VISIBLE_DEVICES" in os.environ else {"CUDA_VISIBLE_DEVICES": ctx.gpu}
    return Command(argv, cwd=ctx.out, env=env, log_name="multiview_finetune" if multiview else "finetune")


def dot(key: str, value: object) -> str:
    """``key=value`` for OmegaConf's command line, YAML-quoted when a string would not read back as itself
    (a prompt with ": " would become a dict, "123" an int)."""
    text = str(value)
    if isinstance(value, (str, Path)):
        try:
            same = yaml.safe_load(text) == text
        except yaml.YAMLError:
            same = False
        if not same:
            text = "'" + text.replace("'", "''") + "'"
    return f"{key}={text}"


def _trial(step: str, ctx: RunContext) -> List[str]:
    return [dot("exp_root_dir", ctx.out), f"name={step}", f"tag={TRIAL_TAG}", "use_timestamp=false", f"seed={ctx.seed}"]


def missing_cuda_pieces() -> List[str]:
    """threestudio's CUDA extensions that are not installed here (cpu.compat stands in for them)."""
    import importlib.util

    return [m for m in ("tinycudann", "nvdiffrast") if importlib.util.find_spec(m) is None]


def launch_command(ctx: RunContext, step: str) -> Command:
    """threestudio's launch.py for ``stage1``, ``stage2``, ``stage3`` or ``export``.

    stage 1: --train, SDS with the partial DreamBooth model;
    stage 2: --test from the stage-1 checkpoint, translating orbit renders with the full model
             into the pseudo-view set;
    stage 3: --train, SDS with the multi-view model + reconstruction of the pseudo views,
             starting from the stage-1 weights;
    export:  --export from the stage-3 checkpoint with its own parsed config and threestudio's mesh exporter.
    """
    assert ctx.threestudio_root is not None and ctx.configs_dir is not None
    p = ctx.preset
    model = [dot(KEYS["model"], ctx.model)]
    prompt = [dot(KEYS["prompt"], ctx.prompt)]
    if step == "stage1":
        mode, config = "--train", ctx.configs_dir / p.configs["stage1"]
        dotlist = model + prompt + [dot(KEYS["checkpoint"], ctx.checkpoint("partial"))]
    elif step == "stage2":
        mode, config = "--test", ctx.configs_dir / p.configs["stage2"]
        dotlist = model + prompt + [dot(KEYS["checkpoint"], ctx.checkpoint("full")),
                                    dot("resume", ctx.last_ckpt("stage1")),
                                    dot(KEYS["pseudo_views_out"], ctx.pseudo_views_dir),
                                    dot(KEYS["translation_prompt"], ctx.instance_prompt)]
    elif step == "stage3":
        mode, config = "--train", ctx.configs_dir / p.configs["stage3"]
        dotlist = model + prompt + [dot(KEYS["checkpoint"], ctx.checkpoint("multiview")),
                                    dot(KEYS["pseudo_views_in"], ctx.pseudo_views_dir),
                                    dot(KEYS["init_weights"], ctx.last_ckpt("stage1"))]
    elif step == "baseline":
        # a baseline method's single NeRF: SDS with the fully trained DreamBooth, that method's config
        mode, config = "--train", ctx.configs_dir / ctx.stage_config("baseline")
        dotlist = model + prompt + [dot(KEYS["checkpoint"], ctx.checkpoint("full"))]
    elif step == "export":
        # threestudio's own idiom: the trial's parsed config + resume= its checkpoint
        final = ctx.final_nerf_step
        mode, config = "--export", ctx.parsed_config(final)
        dotlist = [dot("resume", ctx.last_ckpt(final)), "system.exporter_type=mesh-exporter"]
    else:
        raise ConfigError(f"no launch.py command for step {step!r}")
    # a baseline NeRF is scaled like stage 1 by a preset
    preset_overrides = p.overrides.get(step, p.overrides.get("stage1", []) if step == "baseline" else [])
    dotlist = _trial(step, ctx) + dotlist + list(preset_overrides) + list(ctx.overrides.get(step, []))
    launch = str(ctx.threestudio_root / "launch.py")
    args = ["--config", str(config), mode, "--gpu", ctx.gpu, *dotlist]
    if p.cpu or missing_cuda_pieces():
        # same launch.py through cpu.compat: on the CPU, or on a GPU with pure-torch stand-ins
        # for the CUDA extensions that are not installed (it changes nothing that works)
        argv = [ctx.python, "-m", "threestudio_dreambooth3d.cpu.compat",
                "--threestudio-root", str(ctx.threestudio_root), launch, *args]
    else:
        argv = [ctx.python, launch, *args]
    # launch.py imports threestudio from its own folder; the CPU wrapper needs it on the path too
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ctx.threestudio_root), os.environ.get("PYTHONPATH")]))}
    return Command(argv, cwd=ctx.workspace, env=env, log_name=step)
