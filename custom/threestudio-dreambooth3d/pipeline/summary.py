"""``OUT/summary.html`` and ``OUT/SUMMARY.md``: what was made, how to look at it, how it was made.

One description of the page (:func:`describe`: a title, an intro line, the run's warnings and
sections of typed blocks) and two small renderers, so the HTML and the Markdown always say the
same. The evaluation section sits between markers in both files so ``dreambooth3d eval --run
OUT`` can rewrite it in place (:func:`update_eval_section`).
Both link with paths relative to the output folder, so the folder can be moved or zipped.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

from ..fs import atomic_write_text
from .artifacts import MESH_VIEWS, copy_into
from .context import RunContext, round_step, split_round
from .manifest import Manifest

# -- the page ---------------------------------------------------------------------------------

Inline = Tuple[Literal["text", "code", "em"], str]  # a run of text, `code` or *emphasis*


@dataclass
class Images:
    srcs: List[str]
    alt: Union[str, None] = None  # None: each image's file name (Markdown), no alt (HTML)
    thumbnails: bool = False


@dataclass
class Videos:
    srcs: List[str]


@dataclass
class Links:
    hrefs: List[str]


@dataclass
class CodeList:
    items: List[str]


@dataclass
class Table:
    header: List[str]
    rows: List[List[str]]


@dataclass
class CodeBlocks:
    blocks: List[Tuple[str, List[str]]]  # (title, lines)


@dataclass
class Evaluation:
    results: Optional[Dict[str, Any]]  # OUT/eval/eval.json, None before `dreambooth3d eval --run OUT`


Block = Union[Images, Videos, Links, CodeList, Table, CodeBlocks, Evaluation]


@dataclass
class Section:
    title: str
    block: Union[Block, List[Block]]  # a list: shown one after the other

    @property
    def blocks(self) -> List[Block]:
        return self.block if isinstance(self.block, list) else [self.block]


@dataclass
class Page:
    title: str
    intro: List[Inline]
    sections: List[Section] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)  # shown under the intro


EVAL_TITLE = "Evaluation"
EVAL_BEGIN, EVAL_END = "<!--eval-->", "<!--/eval-->"  # `dreambooth3d eval --run OUT` rewrites this part
NOT_EVALUATED = ("Not evaluated yet: `dreambooth3d eval --run OUT` adds the scores here (`--tiny`: tiny models built offline, "
                 "no download; a set-up check).")


def _scores(results: Dict[str, Any]) -> List[List[str]]:
    """[model, 'metric value, ...'] rows of an eval.json."""
    rows = []
    for model, m in results.get("clip", {}).items():
        rows.append((f"CLIP {model}", [("R-precision", m.get("r_precision")), ("CLIP-T", m.get("clip_t")),
                                       ("CLIP-I", m.get("clip_i")), ("Janus", (m.get("janus") or {}).get("janus"))]))
    for model, m in results.get("dino", {}).items():
        rows.append((f"DINO {model}", [("DINO", m.get("dino"))]))
    return [[name, ", ".join(f"{k} {v:.4f}" for k, v in vals if isinstance(v, (int, float)))] for name, vals in rows]


def _eval_intro(results: Dict[str, Any]) -> List[Inline]:
    views = results.get("views", {})
    stage = f"{views['stage']} " if views.get("stage") else ""
    return [("text", f"{views.get('count', '?')} {stage}views of "), ("code", str(views.get("folder", ""))),
            ("text", ", prompt "), ("em", str(results.get("prompt", ""))), ("text", " (CLIP sees "),
            ("em", str(results.get("clip_prompt", ""))), ("text", ").")]


def _sections(ctx: RunContext) -> Dict[str, List[str]]:
    """Relative paths of what exists, grouped for display."""
    def have(rel: str) -> bool:
        return (ctx.out / rel).exists()

    def by_round(paths, suffix: str) -> List[str]:
        # stage1, stage3, stage3_r2, ... : every round's in order (round 10 after round 9)
        return [ctx.rel(p) for p in sorted(paths, key=lambda p: split_round(p.name[: -len(suffix)])[::-1])]

    rounds = range(1, ctx.rounds + 1)
    videos = by_round(ctx.results_dir.glob("*_turntable.mp4"), "_turntable.mp4")
    sheets = by_round(ctx.results_dir.glob("pseudo_views*.png"), ".png")
    previews = by_round(ctx.results_dir.glob("*_turntable.gif"), "_turntable.gif")
    mesh = sorted(ctx.rel(p) for p in ctx.mesh_dir.glob("*")) if ctx.mesh_dir.is_dir() else []
    checkpoints = [ctx.rel(p) for p in (ctx.checkpoint("partial"), ctx.checkpoint("full"),
                                        *(ctx.checkpoint("multiview", r) for r in rounds), ctx.last_ckpt("stage1"),
                                        *(ctx.last_ckpt(round_step("stage3", r)) for r in rounds))]
    return {
        "videos": [v for v in videos if have(v)],
        "previews": [v for v in previews if have(v)],  # animated: a short orbit is watchable where the video flashes by
        "contact_sheet": [r for r in sheets if have(r)],
        "mesh": mesh,
        "mesh_views": [r for r in [ctx.rel(ctx.results_dir / MESH_VIEWS)] if have(r)],
        "checkpoints": [c for c in checkpoints if have(c)],
    }


def _eval_results(ctx: RunContext) -> Optional[Dict[str, Any]]:
    import json

    path = ctx.out / "eval" / "eval.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def describe(ctx: RunContext, manifest: Manifest, subject: Sequence[Path]) -> Page:
    """The summary page of a run: what exists in its output folder and what the manifest recorded."""
    sec = _sections(ctx)
    steps = [r for r in manifest.steps.values() if r.name != "summary"]
    intro: List[Inline] = [
        ("text", "Subject "), ("code", str(ctx.subject)), ("text", f" ({len(subject)} photos, class "),
        ("em", ctx.class_noun), ("text", ", identifier "), ("code", ctx.identifier), ("text", "), base model "),
        ("code", ctx.model), ("text", ", preset "), ("code", ctx.preset.name), ("text", "."),
    ]
    return Page(f"DreamBooth3D: {ctx.prompt}", intro, [
        Section("Subject photos", Images([ctx.rel(p) for p in subject], thumbnails=True)),
        Section("Turntables", [Images(sec["previews"], alt="turntable (animated)"), Videos(sec["videos"])]),
        Section("Pseudo multi-view images (stage 2" + (", every round" if ctx.rounds > 1 else "") + ")",
                Images(sec["contact_sheet"], alt="pseudo views")),
        Section("Mesh", [Images(sec["mesh_views"], alt="the exported mesh"), Links(sec["mesh"])]),
        Section(EVAL_TITLE, Evaluation(_eval_results(ctx))),
        Section("Checkpoints", CodeList(sec["checkpoints"])),
        Section("Steps", Table(["step", "status", "time (s)", "finished"],
                               [[r.name, r.status, str(r.elapsed_s), r.finished_at or ""] for r in steps])),
        Section("Commands that were run", CodeBlocks([(r.name, list(r.commands)) for r in steps if r.commands])),
    ], warnings=[str(w) for w in manifest.run_info.get("warnings", [])])


# -- Markdown ---------------------------------------------------------------------------------

def _md_inline(parts: List[Inline]) -> str:
    fmt = {"text": "{}", "code": "`{}`", "em": "*{}*"}
    return "".join(fmt[kind].format(text) for kind, text in parts)


def _md_block(b: Block) -> List[str]:
    if isinstance(b, Images):
        return [f"![{b.alt if b.alt is not None else Path(s).name}]({s})" for s in b.srcs]
    if isinstance(b, (Videos, Links)):
        return [f"- [{Path(s).name}]({s})" for s in (b.srcs if isinstance(b, Videos) else b.hrefs)]
    if isinstance(b, CodeList):
        return [f"- `{c}`" for c in b.items]
    if isinstance(b, Table):
        return ["| " + " | ".join(row) + " |" for row in [b.header, ["---"] * len(b.header), *b.rows]]
    if isinstance(b, CodeBlocks):
        return [line for title, lines in b.blocks for line in (f"{title}:", "", "```sh", *lines, "```", "")]
    if isinstance(b, Evaluation):
        if not b.results:
            return [NOT_EVALUATED]
        return ([f"> warning: {w}" for w in b.results.get("warnings", [])]
                + [_md_inline(_eval_intro(b.results)), ""] + _md_block(Table(["model", "scores"], _scores(b.results))))
    raise TypeError(f"no Markdown for {type(b).__name__}")


def _md_section(s: Section) -> List[str]:
    lines = [f"## {s.title}", ""] + [line for b in s.blocks for line in _md_block(b)]
    return [EVAL_BEGIN, *lines, EVAL_END] if s.title == EVAL_TITLE else lines


def render_markdown(page: Page) -> str:
    lines = [f"# {page.title}", "", _md_inline(page.intro)]
    lines += [""] + [f"> warning: {w}" for w in page.warnings] if page.warnings else []
    for s in page.sections:
        lines += ["", *_md_section(s)]
    return "\n".join(lines) + "\n"


# -- HTML -------------------------------------------------------------------------------------

_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}img.t{height:128px;margin:2px}"
          "video{width:320px;margin:4px}pre{background:#f4f4f4;padding:8px;white-space:pre-wrap}"
          "td,th{padding:2px 10px;text-align:left}.warn{color:#a40}")


def _html_inline(parts: List[Inline]) -> str:
    fmt = {"text": "{}", "code": "<code>{}</code>", "em": "<i>{}</i>"}
    return "".join(fmt[kind].format(html.escape(text)) for kind, text in parts)


def _html_block(b: Block) -> str:
    e = html.escape
    if isinstance(b, Images):
        cls = " class='t'" if b.thumbnails else ""
        alt = f" alt='{e(b.alt)}'" if b.alt is not None else ""
        return "".join(f"<img{cls} src='{e(s)}'{alt}>" for s in b.srcs)
    if isinstance(b, Videos):
        return "".join(f"<figure style='display:inline-block'><video src='{e(v)}' controls loop autoplay muted></video>"
                       f"<figcaption>{e(Path(v).name)}</figcaption></figure>" for v in b.srcs)
    if isinstance(b, Links):
        return "<ul>" + "".join(f"<li><a href='{e(m)}'>{e(Path(m).name)}</a></li>" for m in b.hrefs) + "</ul>"
    if isinstance(b, CodeList):
        return "<ul>" + "".join(f"<li><code>{e(c)}</code></li>" for c in b.items) + "</ul>"
    if isinstance(b, Table):
        head = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr>"
        return "<table>" + head + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                                          for row in b.rows) + "</table>"
    if isinstance(b, CodeBlocks):
        return "".join(f"<h3>{e(title)}</h3><pre>{e(chr(10).join(lines))}</pre>" for title, lines in b.blocks)
    if isinstance(b, Evaluation):
        if not b.results:
            return "<p>" + _html_inline([("text", "Not evaluated yet: "), ("code", NOT_EVALUATED.split("`")[1]),
                                         ("text", " adds the scores here.")]) + "</p>"
        return ("".join(f"<p class='warn'>warning: {e(w)}</p>" for w in b.results.get("warnings", []))
                + f"<p>{_html_inline(_eval_intro(b.results))}</p>"
                + "<table>" + "".join(f"<tr><td>{e(name)}</td><td>{e(vals)}</td></tr>"
                                      for name, vals in _scores(b.results)) + "</table>")
    raise TypeError(f"no HTML for {type(b).__name__}")


def _html_section(s: Section) -> str:
    text = f"<h2>{html.escape(s.title)}</h2>" + "".join(_html_block(b) for b in s.blocks)
    return EVAL_BEGIN + text + EVAL_END if s.title == EVAL_TITLE else text


def render_html(page: Page) -> str:
    e = html.escape
    lines = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(page.title)}</title>",
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>{e(page.title)}</h1><p>{_html_inline(page.intro)}</p>"]
    lines += [f"<p class='warn'>warning: {e(w)}</p>" for w in page.warnings]
    lines += [_html_section(s) for s in page.sections]
    return "\n".join(lines + ["</body></html>"])


def _replace_between_markers(path: Path, new: str) -> bool:
    if not path.is_file():
        return False
    text = path.read_text()
    a, b = text.find(EVAL_BEGIN), text.find(EVAL_END)
    if a < 0 or b < 0:
        return False
    atomic_write_text(path, text[:a] + new + text[b + len(EVAL_END):])
    return True


def update_eval_section(summary_html: Path, results: Dict[str, Any]) -> bool:
    """Put ``results`` into an existing summary.html (and the SUMMARY.md beside it); False if there is
    no summary.html (or no eval part in it)."""
    section = Section(EVAL_TITLE, Evaluation(results))
    done = _replace_between_markers(Path(summary_html), _html_section(section))
    if done:
        _replace_between_markers(Path(summary_html).with_name("SUMMARY.md"), "\n".join(_md_section(section)))
    return done


def write_summary(ctx: RunContext, manifest: Manifest, photos: Sequence[Path]) -> Dict[str, Path]:
    subject = [copy_into(p, ctx.results_dir / "subject" / p.name) for p in photos]
    page = describe(ctx, manifest, subject)
    return {
        "html": atomic_write_text(ctx.out / "summary.html", render_html(page)),
        "markdown": atomic_write_text(ctx.out / "SUMMARY.md", render_markdown(page)),
        "subject_photos": ctx.results_dir / "subject",
    }
