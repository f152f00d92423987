"""``OUT/summary.html`` and ``OUT/SUMMARY.md``: what was made, how to look at it, how it was made.

Both link with paths relative to the output folder, so the folder can be moved or zipped.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .artifacts import MESH_VIEWS, copy_into
from .context import RunContext
from .manifest import Manifest, raise_if_disk_full


def _write(path: Path, text: str) -> Path:
    try:
        path.write_text(text)
    except OSError as e:
        raise_if_disk_full(e, path)
        raise
    return path


def _sections(ctx: RunContext, manifest: Manifest) -> Dict[str, List[str]]:
    """Relative paths of what exists, grouped for display."""
    def have(rel: str) -> bool:
        return (ctx.out / rel).exists()

    results = ctx.rel(ctx.results_dir)
    videos = sorted(ctx.rel(p) for p in ctx.results_dir.glob("*_turntable.mp4"))
    mesh = sorted(ctx.rel(p) for p in ctx.mesh_dir.glob("*")) if ctx.mesh_dir.is_dir() else []
    checkpoints = [ctx.rel(p) for p in (ctx.checkpoint("partial"), ctx.checkpoint("full"), ctx.checkpoint("multiview"),
                                        ctx.last_ckpt("stage1"), ctx.last_ckpt("stage3"))]
    return {
        "videos": [v for v in videos if have(v)],
        "contact_sheet": [r for r in [f"{results}/pseudo_views.png"] if have(r)],
        "mesh": mesh,
        "mesh_views": [r for r in [f"{results}/{MESH_VIEWS}"] if have(r)],
        "checkpoints": [c for c in checkpoints if have(c)],
    }


EVAL_BEGIN, EVAL_END = "<!--eval-->", "<!--/eval-->"  # `dreambooth3d eval --run OUT` rewrites this part


def eval_section_html(results: Optional[Dict]) -> str:
    """The evaluation part of summary.html: the metrics of OUT/eval/eval.json, or how to get them."""
    e = html.escape
    if not results:
        return (f"{EVAL_BEGIN}<h2>Evaluation</h2><p>Not evaluated yet: <code>dreambooth3d eval --run OUT "
                f"--subject PHOTOS --prompt PROMPT</code> adds the scores here.</p>{EVAL_END}")
    rows = []
    for model, m in results.get("clip", {}).items():
        rows.append((f"CLIP {model}", [("R-precision", m.get("r_precision")), ("CLIP-T", m.get("clip_t")),
                                       ("CLIP-I", m.get("clip_i"))]))
    for model, m in results.get("dino", {}).items():
        rows.append((f"DINO {model}", [("DINO", m.get("dino"))]))
    body = "".join(f"<tr><td>{e(name)}</td><td>" + ", ".join(
        f"{k} {v:.4f}" for k, v in vals if isinstance(v, (int, float))) + "</td></tr>" for name, vals in rows)
    views = results.get("views", {})
    warn = "".join(f"<p class='warn'>warning: {e(w)}</p>" for w in results.get("warnings", []))
    return (f"{EVAL_BEGIN}<h2>Evaluation</h2>{warn}<p>{views.get('count', '?')} views of "
            f"<code>{e(str(views.get('folder', '')))}</code>, prompt <i>{e(str(results.get('prompt', '')))}</i> "
            f"(CLIP sees <i>{e(str(results.get('clip_prompt', '')))}</i>).</p><table>{body}</table>{EVAL_END}")


def update_eval_section(summary_html: Path, results: Dict) -> bool:
    """Put ``results`` into an existing summary.html; False if there is none (or no eval part)."""
    if not summary_html.is_file():
        return False
    text = summary_html.read_text()
    a, b = text.find(EVAL_BEGIN), text.find(EVAL_END)
    if a < 0 or b < 0:
        return False
    _write(summary_html, text[:a] + eval_section_html(results) + text[b + len(EVAL_END):])
    return True


def _eval_results(ctx: RunContext) -> Optional[Dict]:
    import json

    path = ctx.out / "eval" / "eval.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def write_summary(ctx: RunContext, manifest: Manifest, photos: Sequence[Path]) -> Dict[str, Path]:
    subject = [copy_into(p, ctx.results_dir / "subject" / p.name) for p in photos]
    sec = _sections(ctx, manifest)
    steps = [r for r in manifest.steps.values() if r.name != "summary"]
    title = f"DreamBooth3D: {ctx.prompt}"

    md = [f"# {title}", "",
          f"Subject `{ctx.subject}` ({len(photos)} photos, class *{ctx.class_noun}*, identifier `{ctx.identifier}`), "
          f"base model `{ctx.model}`, preset `{ctx.preset.name}`.", "", "## Subject photos", ""]
    md += [f"![{p.name}]({ctx.rel(p)})" for p in subject]
    md += ["", "## Turntables", ""] + [f"- [{Path(v).name}]({v})" for v in sec["videos"]]
    md += ["", "## Pseudo multi-view images (stage 2)", ""] + [f"![pseudo views]({c})" for c in sec["contact_sheet"]]
    warnings = list(manifest.run_info.get("warnings", []))
    md[4:4] = [f"> warning: {w}" for w in warnings] + ([""] if warnings else [])
    md += ["", "## Mesh", ""] + [f"![mesh]({v})" for v in sec["mesh_views"]] + [f"- [{Path(m).name}]({m})" for m in sec["mesh"]]
    md += ["", "## Checkpoints", ""] + [f"- `{c}`" for c in sec["checkpoints"]]
    md += ["", "## Steps", "", "| step | status | time (s) | finished |", "| --- | --- | --- | --- |"]
    md += [f"| {r.name} | {r.status} | {r.elapsed_s} | {r.finished_at or ''} |" for r in steps]
    md += ["", "## Commands that were run", ""]
    for r in steps:
        if r.commands:
            md += [f"{r.name}:", "", "```sh", *r.commands, "```", ""]

    e = html.escape
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img.t{height:128px;margin:2px}"
         "video{width:320px;margin:4px}pre{background:#f4f4f4;padding:8px;white-space:pre-wrap}"
         "td,th{padding:2px 10px;text-align:left}.warn{color:#a40}</style></head><body>",
         f"<h1>{e(title)}</h1><p>Subject <code>{e(str(ctx.subject))}</code> ({len(photos)} photos, class "
         f"<i>{e(ctx.class_noun)}</i>, identifier <code>{e(ctx.identifier)}</code>), base model "
         f"<code>{e(ctx.model)}</code>, preset <code>{e(ctx.preset.name)}</code>.</p>",
         "<h2>Subject photos</h2>" + "".join(f"<img class='t' src='{e(ctx.rel(p))}'>" for p in subject),
         "<h2>Turntables</h2>" + "".join(
             f"<figure style='display:inline-block'><video src='{e(v)}' controls loop autoplay muted></video>"
             f"<figcaption>{e(Path(v).name)}</figcaption></figure>" for v in sec["videos"]),
         "<h2>Pseudo multi-view images (stage 2)</h2>" + "".join(f"<img src='{e(c)}'>" for c in sec["contact_sheet"]),
         "".join(f"<p class='warn'>warning: {e(w)}</p>" for w in warnings),
         "<h2>Mesh</h2>" + "".join(f"<img src='{e(v)}' alt='the exported mesh'>" for v in sec["mesh_views"])
         + "<ul>" + "".join(f"<li><a href='{e(m)}'>{e(Path(m).name)}</a></li>" for m in sec["mesh"]) + "</ul>",
         eval_section_html(_eval_results(ctx)),
         "<h2>Checkpoints</h2><ul>" + "".join(f"<li><code>{e(c)}</code></li>" for c in sec["checkpoints"]) + "</ul>",
         "<h2>Steps</h2><table><tr><th>step</th><th>status</th><th>time (s)</th><th>finished</th></tr>" + "".join(
             f"<tr><td>{e(r.name)}</td><td>{e(r.status)}</td><td>{r.elapsed_s}</td><td>{e(r.finished_at or '')}</td></tr>"
             for r in steps) + "</table>",
         "<h2>Commands that were run</h2>" + "".join(
             f"<h3>{e(r.name)}</h3><pre>{e(chr(10).join(r.commands))}</pre>" for r in steps if r.commands),
         "</body></html>"]
    return {
        "html": _write(ctx.out / "summary.html", "\n".join(h)),
        "markdown": _write(ctx.out / "SUMMARY.md", "\n".join(md) + "\n"),
        "subject_photos": ctx.results_dir / "subject",
    }
