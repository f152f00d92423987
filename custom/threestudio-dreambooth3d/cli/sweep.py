"""``dreambooth3d sweep``: subjects x prompts x methods, each cell one ``run`` then ``eval``; a report.

Import-light: everything heavy is imported inside :func:`run`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import ConfigError, EvalInputError, MachineError
from ..pipeline.presets import PRESETS

EXECUTORS = ("local", "slurm", "submitit-local", "submitit-debug")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep",
        help="many subjects x prompts x methods: a run + eval per cell, the paper's Table 1 and a page of turntables",
        description="Run `dreambooth3d run` and `dreambooth3d eval` for every subject x prompt x method (a cell), "
        "on this machine's GPUs or on a Slurm cluster through submitit, then write the paper's Table 1 "
        "(mean ± std over subjects), per-subject CSV/JSON and OUT/report/index.html. Rerunning the same command "
        "skips finished cells and retries failed or missing ones; an interrupted cell resumes from its run's manifest.",
    )
    src = p.add_mutually_exclusive_group()  # one of them is required, except with --report-only
    src.add_argument("--dataset", help="DreamBooth-dataset-style folder: <subject>/*.jpg + prompts_and_classes.txt "
                     "(a checkout of github.com/google/dreambooth works, or its dataset/ folder)")
    src.add_argument("--subject", dest="subject_specs", action="append", metavar="FOLDER:CLASS",
                     help="a folder of photos and its class noun, e.g. photos/rex:dog or 'photos/bear:stuffed animal' "
                     "(repeatable)")
    p.add_argument("--subjects", nargs="+", metavar="NAME", help="with --dataset: only these subjects")
    p.add_argument("--out", required=True, help="sweep folder (cells/, report/, sweep.json, progress.json)")
    p.add_argument("--prompt", dest="templates", action="append", metavar="TEMPLATE",
                   help="prompt template naming the subject as {identifier} {class}, e.g. "
                   "'a {identifier} {class} wearing a hat' (repeatable; default: the dataset's object or live-subject "
                   "prompt list, or 'a {identifier} {class}' without a dataset)")
    p.add_argument("--max-prompts", type=int, default=None, metavar="K",
                   help="only the first K prompts of each subject's list")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="methods to compare (default: every method `dreambooth3d run --method` offers)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="`run` preset for every cell")
    p.add_argument("--model", default=None, help="base Stable Diffusion for every cell (default: the preset's)")
    p.add_argument("--identifier", default="sks", help="rare token for every subject (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; each cell's seed is a hash of it and the cell's subject, prompt and method")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STEP:KEY=VALUE",
                   help="passed to every cell's `run --set` (repeatable)")
    p.add_argument("--threestudio", default=None, help="threestudio checkout (default $THREESTUDIO_ROOT or the installed one)")
    p.add_argument("--configs", default=None, help="this project's configs/ folder (default: the checkout's)")
    g = p.add_argument_group("evaluation (each cell's `dreambooth3d eval`)")
    g.add_argument("--clip-models", nargs="+", default=None, help="CLIP models (default: eval's, the paper's three)")
    g.add_argument("--clip-i-model", default=None, help="which CLIP model's CLIP-I the table shows (default ViT-B/32)")
    g.add_argument("--dino-model", default=None, help="DINO model (default: eval's)")
    g.add_argument("--distractors", default=None, help="file of captions replacing eval's object-centric distractors for R-precision; each "
                   "subject's other prompts stay in the set (docs/EVALUATION.md)")
    x = p.add_argument_group("where cells run")
    x.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this machine, one cell per visible GPU (one at a time on a CPU); slurm: one Slurm job per "
                   "cell through submitit; submitit-local / submitit-debug: submitit's local processes / in-process "
                   "runner, to try the cluster path without a cluster (default %(default)s)")
    x.add_argument("--gpus", default=None, help="local: GPUs to use, e.g. 0,1 (default: every visible GPU)")
    x.add_argument("--max-parallel", type=int, default=None,
                   help="submitit: at most this many cells in flight (default: all; Slurm queues them)")
    x.add_argument("--partition", default=None, help="slurm: partition")
    x.add_argument("--timeout-min", type=int, default=24 * 60, help="submitit: time limit per cell in minutes")
    x.add_argument("--gpus-per-node", type=int, default=1, help="slurm: GPUs per cell (default %(default)s)")
    x.add_argument("--cpus-per-task", type=int, default=8, help="slurm: CPUs per cell (default %(default)s)")
    x.add_argument("--mem-gb", type=int, default=64, help="slurm: memory per cell (default %(default)s)")
    x.add_argument("--slurm", dest="slurm_params", action="append", default=[], metavar="KEY=VALUE",
                   help="any other submitit slurm_KEY parameter, e.g. account=myproj or constraint=a100 (repeatable)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the cells on disk, run nothing")
    p.add_argument("--dry-run", action="store_true", help="list the cells and whether each would run, run nothing")
    p.add_argument("--progress-every", type=float, default=60.0, metavar="S",
                   help="print the progress line at least every S seconds (default %(default)s)")
    return p


def resolve_methods(requested: Optional[List[str]]) -> List[str]:
    from ..pipeline.context import METHODS

    available = list(METHODS)
    methods = list(dict.fromkeys(requested or available))
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise ConfigError(f"--methods {unknown[0]!r}: `dreambooth3d run` offers {', '.join(available)}.")
    return methods


def _subjects_and_prompts(args):
    from ..sweep.dataset import (DEFAULT_TEMPLATE, check_template, parse_subject_spec, read_dreambooth_dataset,
                                 unique_names)

    if args.dataset:
        ds = read_dreambooth_dataset(args.dataset, args.subjects)
        if ds.unlisted:
            print(f"sweep: warning: {len(ds.unlisted)} folder(s) of photos in {ds.root} are not in its "
                  f"prompts_and_classes.txt and are not swept: {', '.join(ds.unlisted)} (add a line "
                  "'subject_name,class' for each to include it)", file=sys.stderr, flush=True)
        subjects = ds.subjects
        lists = {s.name: ds.prompts_for(s) for s in subjects}
    else:
        if args.subjects:
            raise ConfigError("--subjects picks subjects of a --dataset; with --subject FOLDER:CLASS list only those.")
        subjects = unique_names([parse_subject_spec(s) for s in args.subject_specs])
        lists = {s.name: [DEFAULT_TEMPLATE] for s in subjects}
    if args.templates:
        templates = [check_template(t) for t in args.templates]
        lists = {s.name: list(templates) for s in subjects}
    if args.max_prompts is not None:
        if args.max_prompts < 1:
            raise ConfigError("--max-prompts must be at least 1.")
        lists = {k: v[: args.max_prompts] for k, v in lists.items()}
    empty = [s.name for s in subjects if not lists[s.name]]
    if empty:
        raise ConfigError(f"subject {empty[0]!r} has no prompts (its list in prompts_and_classes.txt is empty); "
                          "pass --prompt TEMPLATE.")
    return subjects, lists


def check_eval_models(args, subjects) -> Optional[Exception]:
    """The problem every cell's `dreambooth3d eval` would hit with its models (hub ids that cannot be
    loaded offline), found before any cell runs; None when they load. Builds the tiny models of a
    smoke sweep once, for every cell."""
    from ..evaluation.run_eval import EvalConfig, check_models_available
    from .eval import eval_models

    clip, dino = eval_models(args.clip_models, args.dino_model, tiny=args.preset == "smoke")
    cfg = EvalConfig(prompt="-", run="-", subject=str(subjects[0].folder) if subjects else None,
                     clip_models=clip, dino_model=dino)
    try:
        check_models_available(cfg)
    except EvalInputError as e:
        return EvalInputError(f"{e} (sweep: the cells' eval models; pass them with sweep's --clip-models and "
                              "--dino-model, or --preset smoke for the tiny offline ones)")
    return None


def _parse_kv(items: List[str], flag: str) -> Dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} account=myproject")
        out[k.strip()] = v
    return out


def build_executor(args, out: Path, cpu_preset: bool):
    from ..sweep.executors import LocalGPUExecutor, SubmititExecutor, visible_gpus

    if args.executor == "local":
        if cpu_preset:
            return LocalGPUExecutor([None])  # the preset runs on the CPU: one cell at a time
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else visible_gpus()
        if not gpus:
            raise MachineError(f"preset {args.preset!r} needs a CUDA GPU and none is visible. Use --preset smoke to check "
                               "the set-up on a CPU, or --executor slurm to run the cells on a cluster.")
        return LocalGPUExecutor(gpus)
    cluster = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}[args.executor]
    params = {"timeout_min": args.timeout_min, "name": "dreambooth3d-sweep"}
    if cluster == "slurm":
        params.update(gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                      tasks_per_node=1, nodes=1)
        if args.partition:
            params["slurm_partition"] = args.partition
        params.update({f"slurm_{k}": v for k, v in _parse_kv(args.slurm_params, "--slurm").items()})
    return SubmititExecutor(out / "submitit", cluster, params, args.max_parallel)


def run(args: argparse.Namespace) -> int:
    from ..core.subject import list_subject_images
    from ..fs import sha256_files
    from ..pipeline.commands import locate_configs
    from ..environment.fetch import ensure_threestudio
    from ..pipeline.presets import get_preset
    from ..sweep.plan import SweepOptions, is_finished, plan_cells, read_plan, write_plan, write_prompt_sets
    from ..formats import format_duration
    from ..sweep.report import write_report
    from ..sweep.run import run_sweep

    out = Path(args.out).resolve()
    if args.report_only:
        cells = read_plan(out)
        rep = write_report(out, cells, clip_i_model=args.clip_i_model)
        print(rep["markdown"])
        print(f"wrote {rep['dir']} (open {rep['html']})")
        return 0

    # every check before any work: subjects and photos, prompts, methods, threestudio, configs
    if not args.dataset and not args.subject_specs:
        raise ConfigError("pass the subjects: --dataset DIR (DreamBooth layout) or --subject FOLDER:CLASS ...")
    subjects, prompts = _subjects_and_prompts(args)
    photos = {s.name: sha256_files(list_subject_images(s.folder)) for s in subjects}
    methods = resolve_methods(args.methods)
    preset = get_preset(args.preset)
    opts = SweepOptions(out=out, preset=args.preset, model=args.model, identifier=args.identifier, seed=args.seed,
                        threestudio=str(ensure_threestudio(args.threestudio, fetch=not args.dry_run)), configs=str(locate_configs(args.configs)),
                        overrides=list(args.overrides), clip_models=args.clip_models, dino_model=args.dino_model,
                        distractors=str(Path(args.distractors).resolve()) if args.distractors else None)
    cells = plan_cells(opts, subjects, prompts, methods, photos)
    eval_problem = check_eval_models(args, subjects)
    todo = [c for c in cells if not is_finished(c)]
    n_prompts = sum(len(v) for v in prompts.values())
    print(f"sweep: {len(cells)} cells = {len(subjects)} subject(s) x their prompts ({n_prompts} in all) x "
          f"{len(methods)} method(s); {len(cells) - len(todo)} finished, {len(todo)} to run", flush=True)
    if eval_problem is not None:
        if not args.dry_run:
            raise eval_problem
        print(f"sweep: warning: every cell's eval would fail: {eval_problem}", file=sys.stderr, flush=True)
    if args.dry_run:
        for c in cells:
            print(f"  {'run ' if c in todo else 'skip'} {c.key}  seed={c.seed}  {c.out}")
        return 0

    executor = build_executor(args, out, preset.cpu) if todo else None  # all finished: no GPU needed
    write_plan(out, opts, cells, {"methods": methods, "subjects": [s.name for s in subjects]})
    write_prompt_sets(opts, subjects, prompts)
    result = run_sweep(out, cells, executor, methods=methods, clip_i_model=args.clip_i_model,
                       every_s=args.progress_every)
    rep, progress = result["report"], result["progress"]
    print(rep["markdown"])
    print(f"sweep: report in {rep['dir']} (open {rep['html']}); {format_duration(progress.counts()['elapsed_s'])} in all")
    if progress.failures:
        print(f"sweep: {len(progress.failures)} cell(s) failed; rerun the same command to retry them:", file=sys.stderr)
        for f in progress.failures:
            print(f"  {f['key']}: log {f['log']}", file=sys.stderr)
        return 1
    return 0
