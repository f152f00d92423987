"""Evaluate a folder of rendered views: find them, embed them, score them, write the report.

Outputs (in ``out``): ``eval.json`` (every number, per model), ``view_grid.png`` (a
contact sheet of the views scored) and the table ``format_table`` prints.

Finding the views of a run (``--run DIR``), the heuristic:
1. candidates are the folders under DIR (DIR included) holding PNG files directly,
   except an evaluation output folder (one holding ``eval.json`` or ``view_grid.png``);
2. a folder named ``*-test`` wins over any other: threestudio's test phase writes the
   turntable frames to ``<trial>/save/it<STEP>-test/<i>.png``, while validation images
   sit loose in ``save/`` and pseudo views elsewhere;
3. then a folder whose path below DIR names stage 3 (``stage3``, ``stage-3``,
   ``stage_3``, any case) wins: that is the final asset of a DreamBooth3D run;
4. then the folder with the most recently written PNG (a later test run, a later step).
``--views`` takes a folder or a glob and skips all of this.

threestudio saves each test frame as panels side by side (rgb | normal | opacity, all
the same size). A view whose width is an exact multiple (2 or more) of its height is
therefore cut to its leftmost square, the RGB render (``first_panel=False`` keeps the
whole image).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..errors import EvalInputError
from ..core.subject import IMAGE_EXTENSIONS, list_subject_images, load_image
from . import DEFAULT_CLIP_MODELS
from . import DEFAULT_DINO_MODEL
from .metrics import mean_pairwise_similarity, r_precision, true_prompt_ranks

EVAL_JSON = "eval.json"
GRID_PNG = "view_grid.png"
EVAL_LOG = "eval.log"  # the model libraries' warnings
_STAGE3 = re.compile(r"stage[-_ ]?3", re.IGNORECASE)

# Default distractors: "a {thing}" for everyday things of many kinds (animals, objects of
# the DreamBooth dataset, COCO-style objects). A thing named in the evaluated prompt is
# dropped so the subject's own class never competes with it.
DEFAULT_DISTRACTOR_THINGS = (
    "dog", "cat", "backpack", "teddy bear", "sneaker", "vase", "teapot", "clock", "robot toy",
    "sunglasses", "candle", "duck toy", "bowl", "can", "boot", "stuffed animal", "horse", "bird",
    "elephant", "giraffe", "zebra", "bicycle", "motorcycle", "car", "bus", "airplane", "boat",
    "chair", "couch", "bed", "laptop", "television", "cell phone", "book", "umbrella", "suitcase",
    "guitar", "pizza", "cake", "banana", "apple", "broccoli", "hamburger", "potted plant", "lamp",
    "mushroom", "castle", "tree", "skull", "shoe",
)


@dataclass
class EvalConfig:
    prompt: str
    views: Optional[str] = None  # folder or glob of rendered views ...
    run: Optional[str] = None  # ... or a run folder searched as the module docstring says
    subject: Optional[str] = None  # folder of the input photos; needed for CLIP-I and DINO
    out: Optional[str] = None  # default: RUN/eval, or VIEWS_FOLDER/eval
    clip_models: Sequence[str] = DEFAULT_CLIP_MODELS
    dino_model: Optional[str] = DEFAULT_DINO_MODEL
    distractors_file: Optional[str] = None
    identifier: str = "sks"  # removed from the prompt before CLIP sees it: CLIP has never seen it
    first_panel: bool = True
    device: Optional[str] = None
    batch_size: int = 32
    grid_max_views: int = 24
    grid_thumb: int = 128
    show_warnings: bool = False  # -v: third-party warnings on the terminal as well as in eval.log


def _natural_key(path: Path):
    # threestudio names frames 0.png ... 119.png: order them as numbers
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", str(path))]


def find_run_views(run_dir: Union[str, Path]) -> Path:
    """The folder of the final rendered views under a run folder (see the module docstring)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvalInputError(f"Run folder {run_dir} does not exist. Pass the output folder of a run, or --views DIR.")
    best: Optional[Tuple[tuple, Path]] = None
    for folder in [run_dir, *(p for p in run_dir.rglob("*") if p.is_dir())]:
        if (folder / EVAL_JSON).exists() or (folder / GRID_PNG).exists():
            continue
        pngs = [p for p in folder.glob("*.png") if p.is_file()]
        if not pngs:
            continue
        key = (
            folder.name.endswith("-test"),
            bool(_STAGE3.search(folder.relative_to(run_dir).as_posix())),
            max(p.stat().st_mtime for p in pngs),
        )
        if best is None or key > best[0]:
            best = (key, folder)
    if best is None:
        raise EvalInputError(
            f"No folder with PNG views under {run_dir}. Render the final stage's turntable first "
            "(threestudio: launch.py --test with the stage's config and resume=<ckpt>), or pass --views DIR_OR_GLOB."
        )
    return best[1]


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
    files = sorted((p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and p.name != GRID_PNG), key=_natural_key)
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
    if not identifier:
        return prompt.strip()
    return " ".join(re.sub(rf"(?<!\w){re.escape(identifier)}(?!\w)", " ", prompt).split())


def default_distractors(clip_prompt: str) -> List[str]:
    words = set(re.findall(r"\w+", clip_prompt.lower()))
    return [f"a {t}" for t in DEFAULT_DISTRACTOR_THINGS if not set(t.split()) & words]


def read_distractors(path: Union[str, Path]) -> List[str]:
    """One prompt a line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"Distractor file {path} does not exist. Write one prompt a line, or leave --distractors out for the default list.")
    lines = [line.strip() for line in path.read_text().splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise EvalInputError(f"Distractor file {path} holds no prompts. Write one prompt a line.")
    return prompts


def candidate_prompts(clip_prompt: str, distractors: Sequence[str]) -> List[str]:
    """The true prompt first (index 0), then each distinct distractor that differs from it."""
    seen = {clip_prompt.strip().lower()}
    out = [clip_prompt]
    for d in distractors:
        if d.strip().lower() not in seen:
            seen.add(d.strip().lower())
            out.append(d)
    if len(out) < 2:
        raise EvalInputError("R-precision needs at least one distractor prompt that differs from the evaluated prompt.")
    return out


def write_view_grid(images: Sequence, path: Union[str, Path], max_views: int = 24, thumb: int = 128) -> Path:
    """A contact sheet of up to ``max_views`` views evenly spaced along the turntable."""
    from PIL import Image

    n = len(images)
    m = max(1, min(n, max_views))
    picked = [images[round(i * (n - 1) / (m - 1))] if m > 1 else images[0] for i in range(m)]
    cols = math.ceil(math.sqrt(m))
    rows = math.ceil(m / cols)
    # thumbnails share the first view's aspect ratio, height ``thumb``
    w0, h0 = picked[0].size
    tw = max(1, round(thumb * w0 / h0))
    sheet = Image.new("RGB", (cols * tw, rows * thumb), (255, 255, 255))
    for i, img in enumerate(picked):
        sheet.paste(img.convert("RGB").resize((tw, thumb), Image.BICUBIC), ((i % cols) * tw, (i // cols) * thumb))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _common_folder(files: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent.resolve()) for p in files]))


def unavailable_models(sources: Sequence[str], cached=None, offline=None, reachable=None) -> Tuple[List[str], str]:
    """The hub ids among ``sources`` that cannot be loaded here without waiting on the network,
    and why: not local folders, not in the HF cache, and the hub is off (HF_HUB_OFFLINE) or unreachable."""
    from .. import hub

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
        f"AutoProcessor.from_pretrained(m).save_pretrained('models/x')\", then copy the folder here."
    )


def evaluate(cfg: EvalConfig) -> Dict:
    """Score the views, write eval.json and view_grid.png into the output folder, return the results.
    Warnings of the model libraries go to eval.log there."""
    from ..pipeline.console import warnings_to_log

    if bool(cfg.views) == bool(cfg.run):
        raise EvalInputError("Pass exactly one of --views DIR_OR_GLOB or --run DIR.")
    if not cfg.prompt or not cfg.prompt.strip():
        raise EvalInputError("--prompt is empty. Pass the prompt the asset was made for, e.g. 'a sks dog wearing a party hat'.")
    check_models_available(cfg)  # before any image is read: no minute of hub retries
    view_files = list_views(find_run_views(cfg.run) if cfg.run else cfg.views)
    views_folder = _common_folder(view_files)
    out = Path(cfg.out) if cfg.out else (Path(cfg.run) if cfg.run else views_folder) / "eval"
    views = [load_view(p, cfg.first_panel) for p in view_files]
    photos, photo_files = load_subject_photos(cfg.subject) if cfg.subject else ([], [])

    clip_prompt = clip_text_prompt(cfg.prompt, cfg.identifier)
    distractors = read_distractors(cfg.distractors_file) if cfg.distractors_file else default_distractors(clip_prompt)
    prompts = candidate_prompts(clip_prompt, distractors)

    results: Dict = {
        "prompt": cfg.prompt,
        "clip_prompt": clip_prompt,
        "views": {"folder": str(views_folder), "count": len(views),
                  "files": [str(p) for p in view_files], "first_panel": cfg.first_panel},
        "subject": {"folder": str(cfg.subject), "count": len(photos), "files": [str(p) for p in photo_files]}
        if cfg.subject else None,
        "distractors": {"source": str(cfg.distractors_file) if cfg.distractors_file else "default",
                        "prompts": prompts[1:]},
        "clip": {},
        "dino": {},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "warnings": [],
    }
    if cfg.identifier and not re.search(rf"(?<!\w){re.escape(cfg.identifier)}(?!\w)", cfg.prompt):
        results["warnings"].append(
            f"the prompt {cfg.prompt!r} does not contain the identifier {cfg.identifier!r}: scoring a prompt "
            "other than the one the asset was made for, or a run made without its subject")
    out.mkdir(parents=True, exist_ok=True)
    with warnings_to_log(out / EVAL_LOG, show=cfg.show_warnings):
        _score(cfg, views, photos, prompts, results)
    results["grid"] = str(write_view_grid(views, out / GRID_PNG, cfg.grid_max_views, cfg.grid_thumb))
    (out / EVAL_JSON).write_text(json.dumps(results, indent=2))
    results["eval_json"] = str(out / EVAL_JSON)
    return results


def _score(cfg: EvalConfig, views, photos, prompts: List[str], results: Dict) -> None:
    """Each model in turn, loaded, run and freed, with one progress bar over the models."""
    from tqdm import tqdm

    from ..pipeline.console import route_library_logs
    from .encoders import ClipEncoder, DinoEncoder

    route_library_logs()  # transformers' own stderr handler would bypass eval.log
    clip_models = list(dict.fromkeys(cfg.clip_models))
    use_dino = bool(cfg.dino_model and photos)
    bar = tqdm(total=len(clip_models) + use_dino, desc="eval models", unit="model", leave=False, disable=None)
    try:
        for source in clip_models:
            bar.set_postfix_str(str(source))
            enc = ClipEncoder.load(source, device=cfg.device)
            img = enc.embed_images(views, cfg.batch_size)
            txt = enc.embed_texts(prompts)
            results["clip"][str(source)] = {
                "r_precision": r_precision(img, txt, true_index=0),
                "clip_t": mean_pairwise_similarity(img, txt[:1]),
                "clip_i": mean_pairwise_similarity(img, enc.embed_images(photos, cfg.batch_size)) if photos else None,
                "true_prompt_rank": true_prompt_ranks(img, txt, true_index=0).tolist(),
            }
            del enc
            bar.update()
        if use_dino:
            bar.set_postfix_str(str(cfg.dino_model))
            enc = DinoEncoder.load(cfg.dino_model, device=cfg.device)
            results["dino"][str(cfg.dino_model)] = {
                "dino": mean_pairwise_similarity(enc.embed_images(views, cfg.batch_size), enc.embed_images(photos, cfg.batch_size))
            }
            del enc
            bar.update()
    finally:
        bar.close()


def format_table(results: Dict) -> str:
    """A small fixed-width table: one row per model, '-' where a metric does not apply."""
    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4f}"

    rows = [(m, fmt(r["r_precision"]), fmt(r["clip_t"]), fmt(r["clip_i"]), "-") for m, r in results["clip"].items()]
    rows += [(m, "-", "-", "-", fmt(r["dino"])) for m, r in results["dino"].items()]
    header = ("model", "R-prec", "CLIP-T", "CLIP-I", "DINO")
    width = max(len(header[0]), *(len(r[0]) for r in rows)) if rows else len(header[0])
    lines = [
        f"{results['views']['count']} views from {results['views']['folder']}",
        f"prompt for CLIP: {results['clip_prompt']!r} vs {len(results['distractors']['prompts'])} distractors",
        "  ".join([header[0].ljust(width), *(h.rjust(7) for h in header[1:])]),
    ]
    lines += ["  ".join([r[0].ljust(width), *(c.rjust(7) for c in r[1:])]) for r in rows]
    return "\n".join(lines)
