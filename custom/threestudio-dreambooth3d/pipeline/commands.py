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
from typing import Dict, List, Literal, Optional, Union

import yaml

from ..core.config_text import encode_literal
from ..errors import ConfigError, MissingFileError
from .context import TRIAL_TAG, RunContext

PACKAGE_DIR = Path(__file__).resolve().parents[1]
EXTENSION_NAME = "threestudio-dreambooth3d"  # the folder name launch.py sees under custom/

LaunchMode = Literal["--train", "--test", "--export"]

# dotlist keys of our configs (see their headers); one place to change them. The prompt
# processor interpolates its model and checkpoint from system.guidance.
KEYS = {
    "model": "system.guidance.pretrained_model_name_or_path",
    "checkpoint": "system.guidance.checkpoint",  # a checkpoint folder (holding dreambooth.json)
    "prompt": "system.prompt_processor.prompt",
    "pseudo_views_out": "system.pseudo_views_dir",  # stage 2 writes the pseudo-view set here
    # stage 2 captions/translation prompts: the subject ("a sks dog, back view"), not the
    # scene prompt, so the multi-view DreamBooth learns the subject's views
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


def finetune_cli(ctx: RunContext, args: List[str], log_name: str, subcommand: str = "finetune") -> Command:
    """``dreambooth3d finetune ARGS`` (the step builds ARGS; or another ``subcommand``), on the run's
    GPU unless the preset is a CPU one."""
    argv = [ctx.python, "-m", "threestudio_dreambooth3d.cli", subcommand, *args]
    env = {} if ctx.preset.cpu or "CUDA_VISIBLE_DEVICES" in os.environ else {"CUDA_VISIBLE_DEVICES": ctx.gpu}
    return Command(argv, cwd=ctx.out, env=env, log_name=log_name)


# keys whose values are user text that the reading component decodes (core/config_text.py)
LITERAL_KEYS = (KEYS["prompt"], KEYS["translation_prompt"])


def dot(key: str, value: object) -> str:
    """``key=value`` for OmegaConf's command line, YAML-quoted when a string would not read back as itself
    (a prompt with ": " would become a dict, "123" an int). User text reaches threestudio literally:
    a prompt holding ``${`` is encoded (:mod:`..core.config_text`); any other value holding it (a
    path) is refused, as threestudio would read it as an interpolation."""
    text = str(value)
    if key in LITERAL_KEYS:
        text = encode_literal(text)
    elif "${" in text:
        raise ConfigError(f"{text!r} ({key}) contains '${{', which threestudio's config reads as a variable; "
                          "use a path without it.")
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


def launch_py(ctx: RunContext, step: str, config: Path, mode: LaunchMode, dotlist: List[str]) -> Command:
    """threestudio's launch.py running ``config`` in ``mode`` as the trial ``OUT/<step>/run``, with
    ``dotlist`` (the step's keys, then its overrides) after the trial keys."""
    assert ctx.threestudio_root is not None
    p = ctx.preset
    dotlist = _trial(step, ctx) + list(dotlist)
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
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ctx.threestudio_root), os.environ.get("PYTHONPATH")])),
           # launch.py's --test/--export reloads the run's own Lightning checkpoint with a bare
           # torch.load; torch >= 2.6 defaults that to weights_only=True, which refuses the config
           # objects some systems (latentnerf) keep in it. The file is this run's own output.
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    return Command(argv, cwd=ctx.workspace, env=env, log_name=step)
