"""``dreambooth3d eval``: CLIP R-precision, CLIP-T, CLIP-I and DINO of a run's rendered views."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..evaluation import DEFAULT_CLIP_MODELS
from ..evaluation import DEFAULT_DINO_MODEL


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder; its final stage's newest test frames are scored (stage3, the last "
                     "round's, or a baseline's); a run without them is refused unless --stage names another step")
    src.add_argument("--views", help="folder or glob of rendered views, e.g. 'outputs/x/save/it10000-test'")
    p.add_argument("--prompt", default=None, help="the prompt the asset was made for, e.g. 'a sks dog wearing a party hat' "
                   "(default with --run: the run's prompt)")
    p.add_argument("--class-noun", default=None, help="the subject's class, e.g. dog (default with --run: the run's); "
                   "picks the DreamBooth dataset's prompt list, the bare 'a {class}' distractor and the Janus view prompts")
    p.add_argument("--prompts", dest="prompts_file", default=None,
                   help="file with the subject's other prompts, one a line, retrieved among (default: the DreamBooth "
                   "dataset's list for the class; a sweep passes its prompts for the subject)")
    p.add_argument("--stage", default=None, help="with --run: score this step's frames (1, 3, baseline, stage3_r2) "
                   "instead of the final stage's; without it a run whose final stage has no frames is refused")
    p.add_argument("--no-janus", dest="janus", action="store_false",
                   help="skip the Janus score (front/side/back view prompts against each frame's azimuth)")
    p.add_argument("--subject", default=None, help="folder of the input photos (needed for CLIP-I and DINO)")
    p.add_argument("--identifier", default="sks",
                   help="rare token removed from the prompt before CLIP scores it (default %(default)s; '' keeps the prompt as is)")
    p.add_argument("--distractors", default=None,
                   help="file with one distractor caption a line, replacing the default object-centric captions "
                   "(DreamFusion-style); the subject's prompts and 'a {class}' stay in the set")
    p.add_argument("--clip-models", nargs="+", default=None,
                   help="CLIP models (hub ids or local folders) for R-precision, CLIP-T and CLIP-I "
                   f"(default: the paper's ViT-B/16, B/32, L/14: {' '.join(DEFAULT_CLIP_MODELS)})")
    p.add_argument("--dino-model", default=None,
                   help=f"DINO/DINOv2 ViT (hub id or local folder) for the DINO score (default {DEFAULT_DINO_MODEL}); "
                   "'none' skips it")
    p.add_argument("--tiny", action="store_true",
                   help="score with a tiny random CLIP and DINO built here, offline (once, in the cache folder): "
                   "checks the set-up without a download; the numbers mean nothing. Explicit --clip-models or "
                   "--dino-model still win")
    p.add_argument("--preset", choices=("default", "smoke"), default="default",
                   help="the preset the run used: smoke (a CPU set-up check) implies --tiny (default %(default)s)")
    p.add_argument("--out", default=None, help="output folder for eval.json and view_grid.png (default RUN/eval or VIEWS/eval)")
    p.add_argument("--no-panel-crop", dest="first_panel", action="store_false",
                   help="score whole images; by default a view W = k*H wide (threestudio's rgb|normal|opacity strip) "
                   "is cut to its leftmost square")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder batch (default %(default)s)")
    p.add_argument("--grid-views", type=int, default=24, help="at most this many views in view_grid.png (default %(default)s)")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="score rendered views: CLIP R-precision, CLIP-T, CLIP-I, DINO",
        description="Score the rendered views of a DreamBooth3D run as the papers do: CLIP R-precision "
        "(the true prompt retrieved among the subject's other prompts and object captions, per CLIP model), a Janus "
        "score (back-facing frames that look like a front), prompt fidelity CLIP-T, and "
        "subject fidelity against the input photos, CLIP-I and DINO. Writes eval.json and view_grid.png.",
    )
    return add_arguments(p)


def eval_models(clip_models: Optional[List[str]], dino_model: Optional[str], tiny: bool = False):
    """(CLIP models, DINO model or None): the flags given, else the tiny offline models with ``tiny``,
    else the paper's hub models."""
    if tiny and (clip_models is None or dino_model is None):
        from ..tiny_models.clip import tiny_eval_models

        tiny_clip, tiny_dino = tiny_eval_models()
        clip_models = [str(tiny_clip)] if clip_models is None else clip_models
        dino_model = str(tiny_dino) if dino_model is None else dino_model
    clip_models = list(DEFAULT_CLIP_MODELS) if clip_models is None else list(clip_models)
    dino_model = DEFAULT_DINO_MODEL if dino_model is None else dino_model
    return clip_models, (None if str(dino_model).lower() in ("", "none") else dino_model)


def config_from_args(args: argparse.Namespace):
    from ..evaluation.run_eval import EvalConfig

    clip_models, dino = eval_models(args.clip_models, args.dino_model, tiny=args.tiny or args.preset == "smoke")
    return EvalConfig(
        prompt=args.prompt, views=args.views, run=args.run, subject=args.subject, out=args.out,
        clip_models=clip_models, dino_model=dino, distractors_file=args.distractors,
        prompts_file=args.prompts_file, class_noun=args.class_noun, stage=args.stage, janus=args.janus,
        identifier=args.identifier, first_panel=args.first_panel, device=args.device,
        batch_size=args.batch_size, grid_max_views=args.grid_views,
        show_warnings=(getattr(args, "verbose", 0) or 0) > 0,
    )


def run(args: argparse.Namespace) -> int:
    from ..evaluation.run_eval import evaluate, format_table

    from pathlib import Path

    from ..pipeline.summary import update_eval_section

    results = evaluate(config_from_args(args))
    for w in results.get("warnings", []):
        print(f"dreambooth3d eval: warning: {w}", file=sys.stderr)
    print(format_table(results))
    print(f"wrote {results['eval_json']} and {results['grid']}")
    if args.run and update_eval_section(Path(args.run) / "summary.html", results):
        print(f"added the scores to {Path(args.run) / 'summary.html'}")
    return 0
