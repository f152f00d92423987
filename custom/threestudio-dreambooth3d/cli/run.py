"""``dreambooth3d run``: the whole DreamBooth3D pipeline in one command, resumable."""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List

from ..errors import ConfigError, MachineError
from ..finetune_options import nonempty
from ..formats import slug
from ..pipeline.context import METHODS, PRIORS, RunContext
from ..pipeline.presets import PRESETS, get_preset
from ..pipeline.steps import STEP_NAMES, step_name


def parse_set(items: List[str]) -> Dict[str, List[str]]:
    """``["stage1:trainer.max_steps=5000", ...]`` -> {"stage1": ["trainer.max_steps=5000"]}."""
    out: Dict[str, List[str]] = {}
    for item in items:
        step, sep, rest = item.partition(":")
        if not sep or "=" not in rest:
            raise ConfigError(f"--set {item!r}: expected STEP:KEY=VALUE, e.g. stage1:trainer.max_steps=5000")
        out.setdefault(step_name(step), []).append(rest)
    return out


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="the whole pipeline: finetune -> stage 1 -> stage 2 -> multi-view finetune -> stage 3 -> mesh",
        description="DreamBooth3D end to end. Stages 1-3 and the mesh export run through threestudio's launch.py "
        "with this project's configs. Rerunning the same command skips finished steps and redoes what an input "
        "change affects; OUT/summary.html shows the results and the exact commands.",
    )
    p.add_argument("--subject", required=True, help="folder with 3-6 photos of the subject")
    p.add_argument("--class-noun", required=True, type=nonempty, help="what the subject is, e.g. dog, backpack, toy")
    p.add_argument("--prompt", required=True, help="what to make, naming the subject as IDENTIFIER CLASS, "
                   "e.g. 'a sks dog wearing a hat'")
    p.add_argument("--identifier", default="sks", type=nonempty, help="rare token DreamBooth binds the subject to (default sks)")
    p.add_argument("--model", default=None, help="base Stable Diffusion, hub id or diffusers folder "
                   "(default: the preset's; smoke builds a tiny random one)")
    p.add_argument("--out", default=None, help="output folder (default outputs/dreambooth3d/PROMPT)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="; ".join(f"{n}: {pr.description}" for n, pr in PRESETS.items()) + " (default: default)")
    p.add_argument("--gpu", default="0", help="GPU index, passed to launch.py --gpu (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from", dest="start_from", default=None, metavar="STEP",
                   help=f"redo this step and all after it ({', '.join(STEP_NAMES)})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STEP:KEY=VALUE",
                   help="extra threestudio dotlist override for a stage, e.g. stage1:trainer.max_steps=5000 "
                   "(repeatable; for finetune steps, extra `dreambooth3d finetune` options: finetune:--lora-rank=8)")
    p.add_argument("--method", choices=list(METHODS), default="dreambooth3d",
                   help="dreambooth3d: the three stages; dreamboothfusion: the paper's DreamBooth+Fusion baseline "
                   "(full checkpoint + plain SDS); latentnerf: Latent-NeRF + DreamBooth (full checkpoint). "
                   "A baseline runs finetune -> baseline NeRF -> mesh -> summary (default dreambooth3d)")
    p.add_argument("--multiview-init", choices=["partial", "full"], default=None,
                   help="the first finetune's checkpoint the multi-view DreamBooth continues (default: the "
                   "preset's, partial, as in the paper; full = continue the fully trained model)")
    p.add_argument("--rounds", type=int, default=1, metavar="K",
                   help="bootstrapped rounds (DreamCraft3D's bootstrapping): repeat stage 2 -> multi-view finetune "
                   "-> stage 3 K times, each round's pseudo views rendered from the previous round's final NeRF; "
                   "round K>=2's steps are stage2_rK, multiview_finetune_rK, stage3_rK (default 1)")
    p.add_argument("--prior", choices=list(PRIORS), default="sd",
                   help="the diffusion prior of stages 1 and 3. sd: the personalised Stable Diffusion (the paper); "
                   "mvdream: the personalised MVDream multi-view model (fewer multi-face/Janus assets): an MVDreamBooth "
                   "on the photos guides stage 1 with multi-view SDS, stage 2 still translates with the 2D full "
                   "DreamBooth, the MVDreamBooth continues on the pseudo views as 4-view sets and guides stage 3 "
                   "(default sd)")
    p.add_argument("--mvdream", default=None, metavar="FOLDER_OR_CKPT",
                   help="with --prior mvdream: a folder from `dreambooth3d convert-mvdream`, or the released checkpoint "
                   "(sd-v2.1-base-4view.pt), converted into OUT/models/mvdream with --model's VAE and text encoder "
                   "(default: that file from the hub's MVDream/MVDream, downloaded once; smoke: a tiny random one)")
    p.add_argument("--threestudio", default=None, help="threestudio checkout (default $THREESTUDIO_ROOT or the installed one)")
    p.add_argument("--configs", default=None, help="folder of this project's threestudio configs (default: the checkout's)")
    p.add_argument("--dry-run", action="store_true", help="print which steps would run and their commands, run nothing")
    return p


def _warn(msg: str) -> None:
    print(f"dreambooth3d run: warning: {msg}", file=sys.stderr, flush=True)


def build_context(args: argparse.Namespace) -> RunContext:
    from ..pipeline.commands import locate_configs
    from ..environment.threestudio_root import locate_threestudio

    preset = get_preset(args.preset)
    overrides = parse_set(args.overrides)
    out = output_folder(args)
    # the smoke preset's tiny model: its path now, built by build_tiny_model once the checks pass
    model = args.model or preset.model or str(out.resolve() / "models" / "tiny-sd")
    ctx = RunContext(out=out, subject=Path(args.subject), class_noun=args.class_noun, prompt=args.prompt,
                     preset=preset, model=model, identifier=args.identifier, gpu=args.gpu, seed=args.seed,
                     threestudio_root=locate_threestudio(args.threestudio), configs_dir=locate_configs(args.configs),
                     overrides=overrides, multiview_init=args.multiview_init, method=args.method,
                     rounds=getattr(args, "rounds", 1), prior=getattr(args, "prior", "sd"),
                     mvdream=getattr(args, "mvdream", None))
    check_step_names(ctx, overrides, args.start_from)
    return ctx


def check_step_names(ctx: RunContext, overrides: Dict[str, List[str]], start_from) -> None:
    """``--set``/``--from`` naming a step this run does not have (stage3_r3 with --rounds 2) is refused."""
    from ..pipeline.steps import steps_for

    names = [s.name for s in steps_for(ctx.method, ctx.rounds, ctx.prior)]
    bases = {s.base for s in steps_for(ctx.method, ctx.rounds, ctx.prior)}
    for step in [*overrides, *([step_name(start_from)] if start_from else [])]:
        if step not in names and step not in bases:
            raise ConfigError(f"step {step!r} is not part of this run ({', '.join(names)}); "
                              + ("raise --rounds or " if "_r" in step else "") + "name one of those.")


def build_tiny_model(args: argparse.Namespace, ctx: RunContext) -> None:
    """The smoke preset's tiny random models: Stable Diffusion, and MVDream for --prior mvdream."""
    build_sd = args.model is None and ctx.preset.model is None and not (Path(ctx.model) / "model_index.json").is_file()
    build_mv = (ctx.prior == "mvdream" and ctx.preset.model is None and not args.mvdream
                and not (ctx.mvdream_model / "model_index.json").is_file())
    if build_sd or build_mv:
        from transformers.utils import logging as hf_logging

        from ..log_routing import route_library_logs
        from ..tiny_models.mvdream import build_tiny_mvdream
        from ..tiny_models.sd import save_tiny_sd

        route_library_logs()  # their warnings join OUT/logs/run.log
        hf_logging.disable_progress_bar()  # "Writing model shards" is not the run's progress
        try:
            if build_sd:
                save_tiny_sd(Path(ctx.model))
            if build_mv:
                build_tiny_mvdream(ctx.mvdream_model)
        finally:
            hf_logging.enable_progress_bar()


def run_steps(runner, start_from=None) -> int:
    """Run the steps; Ctrl-C (or SIGTERM) prints one line naming the step (its record stays
    "running", so the same command resumes it) and gives exit code 130 (143), no traceback."""
    from ..errors import interrupt_exit_code

    try:
        runner.run(start_from)
    except KeyboardInterrupt as e:
        print(f"\ndreambooth3d run: interrupted during {runner.current or 'start-up'}; "
              "rerun the same command to resume", file=sys.stderr, flush=True)
        return interrupt_exit_code(e)
    return 0


def threestudio_for(args: argparse.Namespace):
    """The threestudio to run with: --threestudio, $THREESTUDIO_ROOT, the installed one, else the tested
    commit fetched once into the cache folder (a dry run fetches nothing; its checks say what is missing)."""
    from ..environment.fetch import ensure_threestudio
    from ..errors import ThreestudioNotFoundError

    try:
        return str(ensure_threestudio(args.threestudio, fetch=not args.dry_run,
                                      say=lambda msg: print(f"dreambooth3d run: {msg}", flush=True)))
    except ThreestudioNotFoundError:
        if args.dry_run:
            return args.threestudio
        raise


def check_environment(args: argparse.Namespace) -> None:
    """``dreambooth3d doctor``'s checks for this preset, before anything is built: a missing piece
    stops the run here (a dry run only warns), warnings are printed."""
    from ..cpu.standin_cost import gpu_standins, measured_notice
    from ..environment.doctor import MISSING, WARN, format_table, gpu_info, run_checks
    from ..pipeline.presets import get_preset

    out = output_folder(args)
    info = gpu_info()
    rows = run_checks(args.preset, model=args.model or "", threestudio=args.threestudio, out=out, gpu=info,
                      finetune_args=parse_set(args.overrides).get("finetune", []),
                      prior=args.prior, mvdream=args.mvdream)
    # a stand-in on a GPU is said once, with what it costs here, instead of its doctor row
    notice = measured_notice(rows, gpu=info.available and not get_preset(args.preset).cpu)
    replaced = gpu_standins(rows) if notice else []
    for r in rows:
        if r.status == WARN and r.name not in replaced:
            _warn(f"{r.name}: {r.detail}" + (f" (fix: {r.fix})" if r.fix else ""))
    if notice:
        _warn(notice)
    missing = [r for r in rows if r.status == MISSING]
    if not missing:
        return
    msg = (f"this machine lacks what --preset {args.preset} needs:\n" + format_table(missing)
           + "\n`dreambooth3d doctor` shows every check.")
    if args.dry_run:
        _warn(msg)
        return
    raise MachineError(msg)


def verbosity(args: argparse.Namespace) -> int:
    """-1 (``-q``: errors and the result only), 0 (step lines and bars), 1 (``-v``: every line of every command)."""
    return -1 if getattr(args, "quiet", False) else min(1, getattr(args, "verbose", 0) or 0)


def output_folder(args: argparse.Namespace) -> Path:
    """``--out``, or ``outputs/dreambooth3d/<prompt slug>`` (bounded: a long prompt keeps a hash)."""
    return Path(args.out or Path("outputs") / "dreambooth3d" / slug(args.prompt))


def run(args: argparse.Namespace) -> int:
    """The output folder is checked and locked first (one run per folder); Python warnings of this
    process (threestudio's loader, trimesh...) go to ``OUT/logs/run.log``."""
    from ..pipeline.checks import check_output_folder
    from ..log_routing import warnings_to_log
    from ..pipeline.lock import folder_lock

    out = output_folder(args)
    if verbosity(args) >= 0:
        # the checks below import torch, diffusers and threestudio: seconds of silence otherwise
        print(f"dreambooth3d run: checking the photos, packages, threestudio and the stage configs before any work "
              f"(output: {out})", flush=True)
    check_output_folder(out)
    with (nullcontext() if args.dry_run else folder_lock(out)):
        with warnings_to_log(out / "logs" / "run.log", show=verbosity(args) > 0):
            return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..pipeline.checks import check_configs, check_finetune_options, check_prompt, check_subject
    from ..pipeline.console import Console
    from ..pipeline.commands import prepare_workspace
    from ..formats import format_duration
    from ..pipeline.runner import Runner
    from ..pipeline.validate import check_stage_configs

    if args.start_from:
        args.start_from = step_name(args.start_from)
    warning = check_prompt(args.prompt, args.identifier, args.class_noun)
    warnings = ([warning] if warning else []) + check_subject(Path(args.subject))
    for w in warnings:
        _warn(w)
    args.threestudio = threestudio_for(args)
    check_environment(args)
    ctx = build_context(args)
    check_configs(ctx)
    check_finetune_options(ctx)
    from ..pipeline.steps import steps_for

    runner = Runner(ctx, steps=steps_for(ctx.method, ctx.rounds, ctx.prior), console=Console(verbosity(args)))
    if args.dry_run:
        for d in runner.plan(args.start_from):
            print(f"{d.step.name}: {'run' if d.run else 'skip'} ({d.reason})")
            cmd = d.step.command(ctx)
            if d.run and cmd is not None:
                print("    " + cmd.shell())
        return 0
    check_stage_configs(ctx)  # every stage config + --set override, with threestudio's loader
    build_tiny_model(args, ctx)
    prepare_workspace(ctx)
    runner.manifest.set_run_info({"subject": str(ctx.subject), "class_noun": ctx.class_noun, "prompt": ctx.prompt,
                                  "identifier": ctx.identifier, "model": ctx.model, "preset": ctx.preset.name,
                                  "method": ctx.method, "prior": ctx.prior, "final_step": ctx.final_nerf_step,
                                  "rounds": ctx.rounds,
                                  "threestudio": str(ctx.threestudio_root), "argv": sys.argv,
                                  "warnings": warnings})  # shown on summary.html
    t0 = time.monotonic()
    code = run_steps(runner, args.start_from)
    if code != 0:
        return code
    print(f"DreamBooth3D finished in {format_duration(time.monotonic() - t0)}: open {ctx.out / 'summary.html'}")
    from ..pipeline.steps import NerfStage

    kept = [ctx.last_ckpt(s.name) for s in runner.steps if isinstance(s, NerfStage) and ctx.last_ckpt(s.name).is_file()]
    if kept:  # the Lightning checkpoints later steps (and `--from STEP`) load; nothing else is kept
        print("NeRF checkpoints: " + ", ".join(str(p) for p in kept))
    return 0
