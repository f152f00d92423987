"""Resolve every stage's config with threestudio's own loader before any work starts.

``launch.py`` loads a config with ``threestudio.utils.config.load_config`` and then hands
``cfg.system`` / ``cfg.data`` to the registered classes, which parse them into their
dataclass ``Config`` (``parse_structured``). An unknown key or a wrong type surfaces only
then, after the DreamBooth finetune. :func:`validate_stage` does the same parsing for the
system, each of its parts (geometry, material, background, renderer, guidance, prompt
processor, exporter), the datamodule and the Lightning trainer/checkpoint options, without
building anything; user ``--set`` values that name files must exist.

``dreambooth3d run`` calls this in a subprocess (threestudio is imported there through
``cpu.compat``, as the stages run), with the very command lines the stages will run:
``python -m threestudio_dreambooth3d.pipeline.validate --threestudio-root DIR < spec.json``.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ConfigError

SYSTEM_PARTS = ("geometry", "material", "background", "renderer", "guidance", "prompt_processor", "exporter")
# user overrides whose value is a file or folder that must already exist
_FILE_KEY = re.compile(r"(^|\.)(weights|resume|checkpoint|[a-z_]*_(path|file|ckpt))$")


@dataclass
class StageSpec:
    step: str
    config: str
    dotlist: List[str]
    user_overrides: List[str] = field(default_factory=list)  # the --set ones, named in errors


def _key_error(step: str, prefix: str, err: Exception, user: List[str]) -> str:
    full = getattr(err, "full_key", None) or ""
    m = re.search(r"unexpected keyword argument '([^']+)'", str(err))  # a dataclass Config's __init__
    if m and not full:
        full, err = m.group(1), type(err)(f"unknown key (not a field of {str(err).split('.__init__')[0]})")
    key = ".".join(k for k in (prefix, str(full)) if k)
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    source = " (from --set)" if any(o.split("=", 1)[0] == key for o in user) else ""
    return f"{step}: config key {key}{source}: {first}"


def missing_files(spec: StageSpec) -> List[str]:
    errors = []
    for item in spec.user_overrides:
        key, _, value = item.partition("=")
        value = value.strip().strip("'\"")
        if _FILE_KEY.search(key) and value and "${" not in value and not Path(value).expanduser().exists():
            errors.append(f"{spec.step}: --set {key}={value}: no such file or folder")
    return errors


def validate_stage(spec: StageSpec) -> List[str]:
    """Problems with one stage's config + dotlist, each naming the stage and the key; [] if none."""
    import pytorch_lightning as pl
    import threestudio
    from omegaconf.errors import OmegaConfBaseException
    from threestudio.utils.config import load_config, parse_structured

    errors = missing_files(spec)
    if not Path(spec.config).is_file():
        return errors + [f"{spec.step}: config file {spec.config} not found"]
    with tempfile.TemporaryDirectory() as tmp:  # load_config creates the trial folder
        try:
            cfg = load_config(spec.config, cli_args=list(spec.dotlist), n_gpus=1, exp_root_dir=tmp)
        except (OmegaConfBaseException, ValueError, TypeError) as e:
            return errors + [_key_error(spec.step, "", e, spec.user_overrides)]

    def parse(kind: str, type_name: str, prefix: str, values) -> Optional[object]:
        try:
            cls = threestudio.find(type_name)
        except KeyError:
            errors.append(f"{spec.step}: {prefix}_type={type_name!r} is not a registered threestudio {kind}")
            return None
        if not hasattr(cls, "Config"):
            return None
        try:
            return parse_structured(cls.Config, values)
        except (OmegaConfBaseException, ValueError, TypeError) as e:
            errors.append(_key_error(spec.step, prefix, e, spec.user_overrides))
            return None

    system = parse("system", cfg.system_type, "system", cfg.system)
    if system is not None and getattr(system, "pseudo_view_filter", None):
        from omegaconf import OmegaConf

        from ..core.view_filter import ViewFilterConfig

        try:  # a dict in the system's Config: its keys are checked here, not at stage 2
            ViewFilterConfig.from_dict(OmegaConf.to_container(OmegaConf.create(system.pseudo_view_filter)))
        except (ConfigError, TypeError) as e:
            errors.append(f"{spec.step}: config key system.pseudo_view_filter: {e}")
    if system is not None:
        for part in SYSTEM_PARTS:
            type_name = getattr(system, f"{part}_type", None)
            if type_name:
                parse(part.replace("_", " "), type_name, f"system.{part}", getattr(system, part))
    try:
        threestudio.find(cfg.data_type)(cfg.data)  # datamodules parse their config in __init__ (no I/O)
    except KeyError:
        errors.append(f"{spec.step}: data_type={cfg.data_type!r} is not a registered threestudio datamodule")
    except (OmegaConfBaseException, ValueError, TypeError) as e:
        errors.append(_key_error(spec.step, "data", e, spec.user_overrides))
    for section, cls in (("trainer", pl.Trainer), ("checkpoint", pl.callbacks.ModelCheckpoint)):
        errors += option_errors(spec.step, section, cls, getattr(cfg, section), spec.user_overrides)
    return errors


def option_errors(step: str, section: str, cls: type, values, user: List[str]) -> List[str]:
    """Keys of ``values`` (a config section handed to ``cls(**values)``) that ``cls.__init__`` does not
    take, or whose value is not of its annotated type (``trainer.max_steps=abc``)."""
    known = _init_keywords(cls)
    hints = _init_hints(cls)
    errors = []
    for k in values:
        source = " (from --set)" if any(o.split("=", 1)[0] == f"{section}.{k}" for o in user) else ""
        if k not in known:
            errors.append(f"{step}: config key {section}.{k}{source}: not an option of {cls.__name__}")
        elif k in hints and not _matches(values[k], hints[k]):
            errors.append(f"{step}: config key {section}.{k}{source}: {values[k]!r} is not of the type "
                          f"{cls.__name__} expects ({_type_name(hints[k])})")
    return errors


def _init_hints(cls) -> Dict[str, object]:
    """Resolved annotations of ``__init__`` along the MRO (those that do not resolve are not checked)."""
    import typing

    hints: Dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            hints.update(typing.get_type_hints(init))
        except Exception:  # a forward reference that does not resolve here
            continue
    hints.pop("return", None)
    return hints


def _matches(value, tp) -> bool:
    """Whether a config value fits a type hint; hints this does not understand count as a match."""
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any or tp is object:
        return True
    if origin is typing.Union:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, set) or tp in (list, tuple, set):
        from omegaconf import ListConfig

        return isinstance(value, (list, tuple, set, ListConfig))
    if origin is dict or tp is dict:
        from omegaconf import DictConfig

        return isinstance(value, (dict, DictConfig))
    return True  # a class (a Callback, a timedelta...) or a generic: not checked


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _init_keywords(cls) -> set:
    """Named ``__init__`` parameters along the MRO (a wrapper taking ``**kwargs``, such as
    cpu.compat's Trainer, passes them on to its base)."""
    import inspect

    names: set = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
    return names


def validate(specs: List[StageSpec]) -> List[str]:
    return [e for s in specs for e in validate_stage(s)]


# -- the caller's side (no threestudio import) ------------------------------------------------

class ConfigValidationError(ConfigError):
    """A stage config or --set override threestudio would reject; the message names stage and key."""



def stage_specs(ctx) -> List[StageSpec]:
    """The config file and dotlist each threestudio step of the run's method will run with (from
    its very command). The export loads the final NeRF step's parsed config, which does not exist
    yet: that step's config and dotlist plus the export's stand in for it."""
    from .steps import steps_for

    specs: Dict[str, StageSpec] = {}
    final = ctx.final_nerf_step
    for step in steps_for(ctx.method, ctx.rounds, ctx.prior):
        if not step.needs_threestudio:
            continue
        argv = step.command(ctx).argv
        i = argv.index("--config")
        config, dotlist = argv[i + 1], [a for a in argv[i + 2:] if "=" in a and not a.startswith("--")]
        if step.name == "export" and not Path(config).is_file() and final in specs:
            config, dotlist = specs[final].config, specs[final].dotlist + dotlist
        specs[step.name] = StageSpec(step.name, config, dotlist, list(ctx.overrides.get(step.name, [])))
    return list(specs.values())


def check_stage_configs(ctx, timeout: float = 600) -> None:
    """Run the validation in a subprocess that imports threestudio as the stages will; raises
    :class:`ConfigValidationError` listing every problem."""
    import os
    import subprocess

    specs = stage_specs(ctx)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ctx.threestudio_root),
                                                                      os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([ctx.python, "-m", "threestudio_dreambooth3d.pipeline.validate",
                           "--threestudio-root", str(ctx.threestudio_root)],
                          input=json.dumps([s.__dict__ for s in specs]), capture_output=True, text=True,
                          env=env, cwd=str(ctx.threestudio_root), timeout=timeout)
    result = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{"errors"'):
            result = json.loads(line)
            break
    if result is None:
        from .console import failure_lines

        tail = "\n    ".join(failure_lines(proc.stdout + proc.stderr))
        raise ConfigValidationError(f"could not load the stage configs with threestudio (exit code "
                                    f"{proc.returncode}):\n    {tail}")
    if result["errors"]:
        raise ConfigValidationError("the stage configs do not load in threestudio (nothing was run):\n    "
                                    + "\n    ".join(result["errors"]))


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m threestudio_dreambooth3d.pipeline.validate")
    p.add_argument("--threestudio-root", required=True)
    args = p.parse_args(argv)
    specs = [StageSpec(**d) for d in json.load(sys.stdin)]
    from ..cpu import compat

    compat.enable(args.threestudio_root)  # imports threestudio as the stages will, registers ours
    errors = validate(specs)
    print(json.dumps({"errors": errors}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
