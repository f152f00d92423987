"""Evaluate a folder of rendered views: find them, embed them, score them, write the report.

Outputs (in ``out``): ``eval.json`` (every number, per model), ``view_grid.png`` (a
contact sheet of the views scored) and the table ``format_table`` prints.

Finding the views of a run (``--run DIR``):
1. candidates are the folders under DIR (DIR included) holding PNG files directly,
   except an evaluation output folder (one holding ``eval.json`` or ``view_grid.png``);
2. only frames of the run's final stage count: the step its manifest names as final
   (``stage3``, the last round's ``stage3_rK``, or a baseline's ``baseline``), or, in a
   folder without a manifest, a path naming stage 3 (``stage3``, ``stage-3``, any case)
   or ``baseline``. ``--stage 1`` (or a step name) scores that step's frames instead;
   without it a run whose final stage has no frames is refused, naming what it has;
3. a folder named ``*-test`` wins over any other: threestudio's test phase writes the
   turntable frames to ``<trial>/save/it<STEP>-test/<i>.png``, while validation images
   sit loose in ``save/`` and pseudo views elsewhere;
4. then the folder with the most recently written PNG (a later test run, a later step).
``--views`` takes a folder or a glob and skips all of this.

The prompts a view is retrieved among are built by :mod:`.prompt_sets`; the Janus score
compares each turntable frame with "the front/side/back of a {class}" (:mod:`.metrics`).

threestudio saves each test frame as panels side by side (rgb | normal | opacity, all
the same size). A view whose width is an exact multiple (2 or more) of its height is
therefore cut to its leftmost square, the RGB render (``first_panel=False`` keeps the
whole image).
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..errors import EvalInputError
from ..formats import has_identifier, natural_key, remove_identifier
from ..core.subject import IMAGE_EXTENSIONS, list_subject_images, load_image
from . import DEFAULT_CLIP_MODELS
from . import DEFAULT_DINO_MODEL
from .metrics import (janus_score, mean_pairwise_similarity, r_precision, true_prompt_ranks, turntable_azimuths,
                      view_prompt_texts)
from .prompt_sets import OBJECT_CENTRIC_CAPTIONS, dataset_prompts, read_prompt_file, retrieval_prompts

EVAL_JSON = "eval.json"
GRID_PNG = "view_grid.png"
EVAL_LOG = "eval.log"  # the model libraries' warnings
_FINAL = re.compile(r"(stage[-_ ]?3|baseline)", re.IGNORECASE)  # a run folder without a manifest
MANIFEST = "manifest.json"



@dataclass
class EvalConfig:
    prompt: Optional[str] = None  # default with --run: the run's prompt (its manifest)
    views: Optional[str] = None  # folder or glob of rendered views ...
    run: Optional[str] = None  # ... or a run folder searched as the module docstring says
    subject: Optional[str] = None  # folder of the input photos; needed for CLIP-I and DINO
    out: Optional[str] = None  # default: RUN/eval, or VIEWS_FOLDER/eval
    clip_models: Sequence[str] = DEFAULT_CLIP_MODELS
    dino_model: Optional[str] = DEFAULT_DINO_MODEL
    distractors_file: Optional[str] = None  # replaces the object-centric captions
    prompts_file: Optional[str] = None  # the subject's other prompts (default: the dataset's list for the class)
    class_noun: Optional[str] = None  # default with --run: the run's class noun
    stage: Optional[str] = None  # with --run: score this step's frames ("1", "stage1", "baseline"), not the final one
    janus: bool = True
    identifier: str = "sks"  # removed from the prompt before CLIP sees it: CLIP has never seen it
    first_panel: bool = True
    device: Optional[str] = None
    batch_size: int = 32
    grid_max_views: int = 24
    grid_thumb: int = 128
    show_warnings: bool = False  # -v: third-party warnings on the terminal as well as in eval.log


def read_run_info(run_dir: Union[str, Path]) -> Dict:
    """What ``dreambooth3d run`` recorded about the run (prompt, class noun, final step); {} without a manifest."""
    path = Path(run_dir) / MANIFEST
    try:
        info = json.loads(path.read_text(encoding="utf-8")).get("run", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return info if isinstance(info, dict) else {}


def stage_step(stage: str) -> str:
    """``--stage`` as a step name: ``1`` -> ``stage1``; a step name as it is."""
    stage = str(stage).strip()
    return f"stage{stage}" if stage.isdigit() else stage


def _in_step(rel: str, step: str) -> bool:
    return rel.split("/", 1)[0] == step


def find_run_views(run_dir: Union[str, Path], stage: Optional[str] = None) -> Tuple[Path, str]:
    """The folder of the rendered views to score under a run folder and the step they belong
    to (see the module docstring): the final stage's, or ``stage``'s."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvalInputError(f"Run folder {run_dir} does not exist. Pass the output folder of a run, or --views DIR.")
    final = read_run_info(run_dir).get("final_step")
    want = stage_step(stage) if stage else final
    candidates: List[Tuple[tuple, Path, str]] = []
    for folder in [run_dir, *(p for p in run_dir.rglob("*") if p.is_dir())]:
        if (folder / EVAL_JSON).exists() or (folder / GRID_PNG).exists():
            continue
        pngs = [p for p in folder.glob("*.png") if p.is_file()]
        if not pngs:
            continue
        rel = folder.relative_to(run_dir).as_posix()
        step = rel.split("/", 1)[0] if rel != "." else "."
        key = (folder.name.endswith("-test"), max(p.stat().st_mtime for p in pngs))
        candidates.append((key, folder, step))
    if not candidates:
        raise EvalInputError(
            f"No folder with PNG views under {run_dir}. Render the final stage's turntable first "
            "(threestudio: launch.py --test with the stage's config and resume=<ckpt>), or pass --views DIR_OR_GLOB."
        )
    if want:
        chosen = [c for c in candidates if _in_step(c[1].relative_to(run_dir).as_posix(), want)]
    else:
        chosen = [c for c in candidates if _FINAL.search(c[1].relative_to(run_dir).as_posix())]
    if not chosen:
        have = sorted({c[2] for c in candidates if c[0][0]} or {c[2] for c in candidates})
        what = f"step {want!r}" if want else "the final stage (stage3 or baseline)"
        flag = have[0][len("stage"):] if have and re.fullmatch(r"stage[0-9]+", have[0]) else (have or [""])[0]
        hint = f"Pass --stage {flag} to score {have[0]}'s frames instead, " if have else ""
        raise EvalInputError(
            f"{run_dir} has no rendered frames of {what}; frames exist for: {', '.join(have) or 'nothing'}. "
            f"{hint}or finish the run (dreambooth3d run ... with the same --out) so the final stage renders its turntable."
        )
    best = max(chosen, key=lambda c: c[0])
    return best[1], (want or best[2])


def list_views(views: Union[str, Path]) -> List[Path]:
    """Image files of a folder (not recursive) or matched by a glob, in natural order."""
    spec = str(views)
    path = Path(spec)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        where = f"folder {path}"
    elif path.is_file():
        files = [path]
        where = f"file {path}"
    elif glob.has_magic(spec):
        files = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
        where = f"glob {spec!r}"
    else:
        raise EvalInputError(f"Views {spec} do not exist. Pass a folder of rendered PNG frames or a glob such as 'save/it*-test/*.png'.")
    files = sorted((p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and p.name != GRID_PNG), key=natural_key)
    if not files:
        raise EvalInputError(
            f"No rendered views ({', '.join(IMAGE_EXTENSIONS)}) in {where}. Point --views at the turntable "
            "frames (threestudio writes them to <trial>/save/it<STEP>-test/ in its test phase, launch.py --test)."
        )
    return files


def load_view(path: Path, first_panel: bool = True):
    """A rendered view as PIL RGB; threestudio's rgb|normal|opacity strips cut to the rgb panel."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            img = im.convert("RGB")  # renders are opaque RGB; no alpha handling needed
    except (UnidentifiedImageError, OSError) as e:
        raise EvalInputError(f"View {path} cannot be read as an image ({e}). Remove it or re-render.") from e
    w, h = img.size
    if first_panel and w >= 2 * h and w % h == 0:
        img = img.crop((0, 0, h, h))
    return img


def load_subject_photos(folder: Union[str, Path]):
    """The input photos exactly as the DreamBooth trainer reads them (EXIF, alpha on white,
    centre square), kept at their native size so each encoder resizes them its own way."""
    paths = list_subject_images(folder)
    return [load_image(p, resolution=None) for p in paths], paths


def clip_text_prompt(prompt: str, identifier: str) -> str:
    """The prompt CLIP scores: the rare identifier removed ('a sks dog' -> 'a dog')."""
    return remove_identifier(prompt, identifier)


def build_retrieval_prompts(cfg: "EvalConfig", prompt: str, class_noun: Optional[str]) -> Tuple[List[str], Dict]:
    """The prompts R-precision retrieves among (true one first) and where each part came from."""
    if cfg.prompts_file:
        subject_prompts, source = read_prompt_file(cfg.prompts_file), str(cfg.prompts_file)
    elif class_noun:
        subject_prompts, source = dataset_prompts(class_noun, cfg.identifier), "DreamBooth dataset list for the class"
    else:
        subject_prompts, source = [], "none (no --class-noun or --prompts)"
    captions = read_prompt_file(cfg.distractors_file, "--distractors") if cfg.distractors_file else OBJECT_CENTRIC_CAPTIONS
    prompts = retrieval_prompts(prompt, class_noun, subject_prompts, captions, cfg.identifier)
    info = {"subject_prompts": source, "captions": str(cfg.distractors_file) if cfg.distractors_file else "default",
            "class_noun": class_noun, "prompts": prompts[1:]}
    return prompts, info


def write_view_grid(images: Sequence, path: Union[str, Path], max_views: int = 24, thumb: int = 128) -> Path:
    """A contact sheet of up to ``max_views`` views evenly spaced along the turntable, ``thumb`` px high."""
    from ..core.images import evenly_spaced, make_contact_sheet

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_contact_sheet(evenly_spaced(images, max_views), tile_height=thumb).save(path)
    return path


def _common_folder(files: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent.resolve()) for p in files]))


def unavailable_models(sources: Sequence[str], cached=None, offline=None, reachable=None) -> Tuple[List[str], str]:
    """The hub ids among ``sources`` that cannot be loaded here without waiting on the network,
    and why: not local folders, not in the HF cache, and the hub is off (HF_HUB_OFFLINE) or unreachable."""
    from ..environment import hub

    cached = cached or (lambda s: hub.cached_file(s, "config.json"))
    offline = offline or hub.hub_offline
    reachable = reachable or hub.hub_reachable
    need = [s for s in sources if not Path(s).expanduser().exists() and not cached(s)]
    if not need:
        return [], ""
    if offline():
        return need, "HF_HUB_OFFLINE is set"
    if not reachable():
        return need, "the Hugging Face hub cannot be reached from here"
    return [], ""


def check_models_available(cfg: "EvalConfig", **probes) -> None:
    """Fail in seconds, naming the flags and how to make local folders, when a model would need the hub."""
    dino = [cfg.dino_model] if cfg.dino_model and cfg.subject else []
    missing, why = unavailable_models(list(cfg.clip_models) + dino, **probes)
    if not missing:
        return
    flags = []
    if set(missing) & set(cfg.clip_models):
        flags.append("--clip-models DIR [DIR ...]")
    if set(missing) & set(dino):
        flags.append("--dino-model DIR (or --dino-model none)")
    example = missing[0]
    raise EvalInputError(
        f"{', '.join(missing)}: not local folders and not in the Hugging Face cache, and {why}. Pass local "
        f"model folders: {' '.join(flags)}. Make one where there is network, e.g. python -c \"from transformers "
        f"import AutoModel, AutoProcessor; m='{example}'; AutoModel.from_pretrained(m).save_pretrained('models/x'); "
        f"AutoProcessor.from_pretrained(m).save_pretrained('models/x')\", then copy the folder here. To check "
        "the set-up without them: --tiny (tiny random models built offline; the numbers mean nothing)."
    )


def evaluate(cfg: EvalConfig) -> Dict:
    """Score the views, write eval.json and view_grid.png into the output folder, return the results.
    Warnings of the model libraries go to eval.log there."""
    from ..log_routing import warnings_to_log

    if bool(cfg.views) == bool(cfg.run):
        raise EvalInputError("Pass exactly one of --views DIR_OR_GLOB or --run DIR.")
    info = read_run_info(cfg.run) if cfg.run else {}
    prompt = cfg.prompt if cfg.prompt is not None else info.get("prompt")
    if not prompt or not str(prompt).strip():
        raise EvalInputError("--prompt is empty. Pass the prompt the asset was made for, e.g. 'a sks dog wearing a party hat'"
                             + (f" ({cfg.run} has no manifest.json naming it)." if cfg.run else "."))
    class_noun = cfg.class_noun or info.get("class_noun")
    if cfg.stage and not cfg.run:
        raise EvalInputError("--stage picks a step's frames in a run folder: use it with --run, not --views.")
    check_models_available(cfg)  # before any image is read: no minute of hub retries
    stage = None
    if cfg.run:
        folder, stage = find_run_views(cfg.run, cfg.stage)
        view_files = list_views(folder)
    else:
        view_files = list_views(cfg.views)
    views_folder = _common_folder(view_files)
    out = Path(cfg.out) if cfg.out else (Path(cfg.run) if cfg.run else views_folder) / "eval"
    views = [load_view(p, cfg.first_panel) for p in view_files]
    photos, photo_files = load_subject_photos(cfg.subject) if cfg.subject else ([], [])

    clip_prompt = clip_text_prompt(prompt, cfg.identifier)
    prompts, retrieval = build_retrieval_prompts(cfg, prompt, class_noun)
    view_texts = view_prompt_texts(class_noun) if cfg.janus and class_noun else None

    results: Dict = {
        "prompt": prompt,
        "clip_prompt": clip_prompt,
        "views": {"folder": str(views_folder), "count": len(views), "stage": stage,
                  "files": [str(p) for p in view_files], "first_panel": cfg.first_panel},
        "subject": {"folder": str(cfg.subject), "count": len(photos), "files": [str(p) for p in photo_files]}
        if cfg.subject else None,
        "distractors": retrieval,
        "janus_prompts": view_texts,
        "clip": {},
        "dino": {},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "warnings": [],
    }
    if view_texts is None and cfg.janus:
        results["warnings"].append("no Janus score: pass --class-noun (a run folder's manifest names it)")
    if cfg.identifier and not has_identifier(prompt, cfg.identifier):
        results["warnings"].append(
            f"the prompt {prompt!r} does not contain the identifier {cfg.identifier!r}: scoring a prompt "
            "other than the one the asset was made for, or a run made without its subject")
    out.mkdir(parents=True, exist_ok=True)
    with warnings_to_log(out / EVAL_LOG, show=cfg.show_warnings) as log:
        log.append(f"dreambooth3d eval: {len(views)} views from {views_folder}, prompt {prompt!r}, "
                   f"CLIP {', '.join(map(str, cfg.clip_models))}, DINO {cfg.dino_model if photos else 'not run'}\n")
        _score(cfg, views, photos, prompts, view_texts, results, log)
    results["grid"] = str(write_view_grid(views, out / GRID_PNG, cfg.grid_max_views, cfg.grid_thumb))
    (out / EVAL_JSON).write_text(json.dumps(results, indent=2))
    results["eval_json"] = str(out / EVAL_JSON)
    return results


def _score(cfg: EvalConfig, views, photos, prompts: List[str], view_texts: Optional[List[str]], results: Dict,
           log: Optional[List[str]] = None) -> None:
    """Each model in turn, loaded, run and freed, with one progress bar over the models. transformers'
    own loading bars stay off the terminal; ``log`` (eval.log's lines) gets one line per model."""
    import time

    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from ..log_routing import route_library_logs
    from .encoders import ClipEncoder, DinoEncoder

    route_library_logs()  # transformers' own stderr handler would bypass eval.log
    clip_models = list(dict.fromkeys(cfg.clip_models))
    use_dino = bool(cfg.dino_model and photos)
    bar = tqdm(total=len(clip_models) + use_dino, desc="eval models", unit="model", leave=False, disable=None)
    log = log if log is not None else []
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        for source in clip_models:
            bar.set_postfix_str(str(source))
            t0 = time.monotonic()
            enc = ClipEncoder.load(source, device=cfg.device)
            log.append(f"loaded CLIP {source} in {time.monotonic() - t0:.1f} s\n")
            img = enc.embed_images(views, cfg.batch_size)
            txt = enc.embed_texts(prompts)
            results["clip"][str(source)] = {
                "r_precision": r_precision(img, txt, true_index=0),
                "clip_t": mean_pairwise_similarity(img, txt[:1]),
                "clip_i": mean_pairwise_similarity(img, enc.embed_images(photos, cfg.batch_size)) if photos else None,
                "true_prompt_rank": true_prompt_ranks(img, txt, true_index=0).tolist(),
            }
            if view_texts:
                # the frames are a turntable only when scored from a run's test phase or a folder of them
                results["clip"][str(source)]["janus"] = janus_score(
                    img, enc.embed_texts(view_texts), turntable_azimuths(len(views)))
            del enc
            bar.update()
        if use_dino:
            bar.set_postfix_str(str(cfg.dino_model))
            t0 = time.monotonic()
            enc = DinoEncoder.load(cfg.dino_model, device=cfg.device)
            log.append(f"loaded DINO {cfg.dino_model} in {time.monotonic() - t0:.1f} s\n")
            results["dino"][str(cfg.dino_model)] = {
                "dino": mean_pairwise_similarity(enc.embed_images(views, cfg.batch_size), enc.embed_images(photos, cfg.batch_size))
            }
            del enc
            bar.update()
    finally:
        bar.close()
        if bars_were_on:
            hf_logging.enable_progress_bar()


def format_table(results: Dict) -> str:
    """A small fixed-width table: one row per model, '-' where a metric does not apply."""
    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4f}"

    rows = [(m, fmt(r["r_precision"]), fmt(r["clip_t"]), fmt(r["clip_i"]), "-",
             fmt((r.get("janus") or {}).get("janus"))) for m, r in results["clip"].items()]
    rows += [(m, "-", "-", "-", fmt(r["dino"]), "-") for m, r in results["dino"].items()]
    header = ("model", "R-prec", "CLIP-T", "CLIP-I", "DINO", "Janus")
    width = max(len(header[0]), *(len(r[0]) for r in rows)) if rows else len(header[0])
    stage = results["views"].get("stage")
    lines = [
        f"{results['views']['count']} views" + (f" of {stage}" if stage else "") + f" from {results['views']['folder']}",
        f"prompt for CLIP: {results['clip_prompt']!r} vs {len(results['distractors']['prompts'])} other prompts "
        f"(subject's: {results['distractors'].get('subject_prompts')})",
        "  ".join([header[0].ljust(width), *(h.rjust(7) for h in header[1:])]),
    ]
    lines += ["  ".join([r[0].ljust(width), *(c.rjust(7) for c in r[1:])]) for r in rows]
    return "\n".join(lines)
