"""The sweep's report, from the cells' ``eval.json`` files.

- the DreamBooth3D paper's Table 1 layout: a row per method, a column per CLIP model's
  R-precision (among the subject's other prompts, docs/EVALUATION.md), then CLIP-I and
  DINO (subject fidelity, as the DreamBooth paper scores it) and the Janus score (back
  views that look like a front; lower is better);
  each entry the mean +- standard deviation over subjects, where a subject's value is the
  mean over its prompts. The std is the sample std (n-1 in the denominator: the subjects
  are a sample); with one subject there is none. ``n`` is the number of subjects behind
  the entry (failed or missing cells leave a subject out of that method's row);
- ``per_subject.csv/json``: every metric of every model per method x subject;
- ``cells.csv``: every cell with its seed, status, log and metrics;
- ``index.html``: the table, then per subject x prompt each method's turntable playing
  next to the others' with its scores under it (the paper's user-study view: 3D
  consistency, subject fidelity, prompt fidelity).

Everything is recomputed from the files each time, so the report of a half-finished
sweep is right for what has finished.
"""
from __future__ import annotations

import csv
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..formats import slug
from .plan import DONE, Cell, read_record

REPORT_DIR = "report"
TURNTABLE_FRAMES = 24  # frames of the animated turntable of a cell
THUMB = 128
FRAME_MS = 120


def short_model_name(model: str) -> str:
    """'openai/clip-vit-base-patch16' -> 'ViT-B/16'; a folder or other id -> its last part."""
    m = re.search(r"vit-(base|large|huge|small|giant)-patch(\d+)", model.lower())
    if m:
        return f"ViT-{m.group(1)[0].upper()}/{m.group(2)}"
    return Path(model.rstrip("/")).name or model


def cell_metrics(eval_data: Dict[str, Any]) -> Dict[str, float]:
    """Flat ``{"r_precision:MODEL": v, "clip_t:MODEL": v, "clip_i:MODEL": v, "janus:MODEL": v, "dino:MODEL": v}``."""
    out: Dict[str, float] = {}
    for model, r in (eval_data.get("clip") or {}).items():
        for metric in ("r_precision", "clip_t", "clip_i"):
            if r.get(metric) is not None:
                out[f"{metric}:{model}"] = float(r[metric])
        janus = (r.get("janus") or {}).get("janus")
        if janus is not None:
            out[f"janus:{model}"] = float(janus)
    for model, r in (eval_data.get("dino") or {}).items():
        if r.get("dino") is not None:
            out[f"dino:{model}"] = float(r["dino"])
    return out


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (n-1); std is None for fewer than two values."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass
class CellResult:
    cell: Cell
    status: str  # done / failed / running / queued / not run
    record: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    eval_data: Optional[Dict[str, Any]] = None


def collect(cells: Sequence[Cell]) -> List[CellResult]:
    results = []
    for cell in cells:
        rec = read_record(cell) or {}
        status = rec.get("status", "not run")
        if rec and rec.get("fingerprint") != cell.fingerprint and status == DONE:
            status = "outdated"  # finished for other inputs; the next sweep reruns it
        data = None
        if status == DONE and cell.eval_json.is_file():
            data = json.loads(cell.eval_json.read_text())
        elif status == DONE:
            status = "not run"  # eval.json gone
        results.append(CellResult(cell, status, rec, cell_metrics(data) if data else {}, data))
    return results


def per_subject(results: Sequence[CellResult]) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """``(method, subject) -> {"prompts": n, "metrics": {key: mean over the subject's prompts}}``."""
    acc: Dict[Tuple[str, str], Dict[str, List[float]]] = {}
    prompts: Dict[Tuple[str, str], int] = {}
    for r in results:
        if r.status != DONE:
            continue
        k = (r.cell.method, r.cell.subject)
        prompts[k] = prompts.get(k, 0) + 1
        for key, v in r.metrics.items():
            acc.setdefault(k, {}).setdefault(key, []).append(v)
    return {k: {"prompts": prompts[k], "metrics": {m: sum(v) / len(v) for m, v in acc.get(k, {}).items()}}
            for k in prompts}


def table_columns(results: Sequence[CellResult], clip_i_model: Optional[str] = None) -> List[Tuple[str, str]]:
    """``[(label, metric key)]``: R-precision per CLIP model (in eval order), CLIP-I, DINO, Janus.

    CLIP-I and the Janus score are shown for one model (``clip_i_model``, default ViT-B/32
    when scored, as the DreamBooth paper, else the first); every model's are in the
    per-subject files."""
    clip_models: List[str] = []
    dino_models: List[str] = []
    for r in results:
        for model in (r.eval_data or {}).get("clip", {}):
            clip_models.append(model) if model not in clip_models else None
        for model in (r.eval_data or {}).get("dino", {}):
            dino_models.append(model) if model not in dino_models else None
    cols = [(f"R-precision {short_model_name(m)}", f"r_precision:{m}") for m in clip_models]
    if clip_models:
        pick = clip_i_model if clip_i_model in clip_models else next(
            (m for m in clip_models if short_model_name(m) == "ViT-B/32"), clip_models[0])
        cols.append((f"CLIP-I ({short_model_name(pick)})", f"clip_i:{pick}"))
    cols += [(f"DINO ({short_model_name(m)})" if len(dino_models) > 1 else "DINO", f"dino:{m}") for m in dino_models]
    if clip_models and any(f"janus:{pick}" in r.metrics for r in results):
        cols.append((f"Janus ({short_model_name(pick)}) ↓", f"janus:{pick}"))
    return cols


def summary_table(subjects: Dict[Tuple[str, str], Dict[str, Any]], methods: Sequence[str],
                  keys: Sequence[str]) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``method -> key -> {"mean", "std", "n"}`` over the subjects that have the metric."""
    table: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for method in methods:
        row = {}
        for key in keys:
            values = [v["metrics"][key] for (m, _), v in subjects.items() if m == method and key in v["metrics"]]
            mean, std = mean_std(values)
            row[key] = {"mean": mean, "std": std, "n": len(values)}
        table[method] = row
    return table


def fmt_entry(entry: Dict[str, Any]) -> str:
    if entry["mean"] is None:
        return "-"
    return f"{entry['mean']:.3f}" + (f" ± {entry['std']:.3f}" if entry["std"] is not None else "")


def format_markdown(table: Dict[str, Dict[str, Dict[str, Any]]], columns: Sequence[Tuple[str, str]]) -> str:
    head = ["method", *(label for label, _ in columns), "subjects"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for method, row in table.items():
        n = max((e["n"] for e in row.values()), default=0)
        lines.append("| " + " | ".join([method, *(fmt_entry(row[k]) for _, k in columns), str(n)]) + " |")
    return "\n".join(lines)


def _turntable(result: CellResult, path: Path) -> Optional[Path]:
    """An animated GIF of evenly spaced turntable frames (the RGB panel of each), or None:
    every method's plays next to the others' on index.html, in any browser, from files
    eval.json lists (no video codec needed)."""
    files = [Path(f) for f in ((result.eval_data or {}).get("views") or {}).get("files", [])]
    files = [f for f in files if f.is_file()]
    if not files:
        return None
    from PIL import Image

    from ..core.images import evenly_spaced, save_gif
    from ..evaluation.run_eval import load_view  # one place for the rgb-panel crop

    frames = [load_view(f).resize((THUMB, THUMB), Image.BICUBIC) for f in evenly_spaced(files, TURNTABLE_FRAMES)]
    return save_gif(frames, path, FRAME_MS)


def cell_scores(result: CellResult, columns: Sequence[Tuple[str, str]]) -> List[Tuple[str, float]]:
    """The table's scores of one cell, labelled as the table labels them."""
    return [(label, result.metrics[key]) for label, key in columns if key in result.metrics]


def _rel(path: Any, start: Path) -> str:
    return Path(os.path.relpath(str(path), str(start))).as_posix()


def write_html(path: Path, results: Sequence[CellResult], methods: Sequence[str], table, columns,
               counts: Dict[str, int]) -> Path:
    root = path.parent
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>DreamBooth3D sweep</title><style>",
             "body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top} .failed{color:#b00} "
             ".muted{color:#888} img{display:block}</style></head><body>",
             "<h1>DreamBooth3D sweep</h1>",
             "<p>" + ", ".join(f"{esc(k)}: {v}" for k, v in counts.items()) + "</p>",
             "<h2>Table 1: mean ± std over subjects</h2><table><tr><th>method</th>"
             + "".join(f"<th>{esc(label)}</th>" for label, _ in columns) + "<th>subjects</th></tr>"]
    for method, row in table.items():
        n = max((e["n"] for e in row.values()), default=0)
        parts.append(f"<tr><td>{esc(method)}</td>" + "".join(f"<td>{esc(fmt_entry(row[k]))}</td>" for _, k in columns)
                     + f"<td>{n}</td></tr>")
    parts.append("</table><p class='muted'>A subject's value is the mean over its prompts; ± is the sample "
                 "standard deviation over subjects. Per-subject numbers: <a href='per_subject.csv'>per_subject.csv</a>, "
                 "<a href='per_subject.json'>per_subject.json</a>; every cell: <a href='cells.csv'>cells.csv</a>.</p>")
    parts.append("<h2>Side by side</h2><p class='muted'>Per subject and prompt, each method's turntable next to "
                 "the others' (the paper's user study judges 3D consistency, subject fidelity and prompt fidelity "
                 "this way), its scores under it.</p>")
    by_subject: Dict[str, List[CellResult]] = {}
    for r in results:
        by_subject.setdefault(r.cell.subject, []).append(r)
    for subject, rs in by_subject.items():
        parts.append(f"<h3>{esc(subject)} <span class='muted'>({esc(rs[0].cell.class_noun)})</span></h3>"
                     "<table><tr><th>prompt</th>" + "".join(f"<th>{esc(m)}</th>" for m in methods) + "</tr>")
        prompts = list(dict.fromkeys(r.cell.prompt for r in rs))
        for prompt in prompts:
            parts.append(f"<tr><td>{esc(prompt)}</td>")
            for method in methods:
                r = next((x for x in rs if x.cell.prompt == prompt and x.cell.method == method), None)
                if r is None:
                    parts.append("<td class='muted'>-</td>")
                    continue
                if r.status == DONE:
                    anim = _turntable(r, root / "turntables" / subject / slug(prompt) / f"{method}.gif")
                    img = f"<img src='{esc(_rel(anim, root))}' alt='{esc(r.cell.key)}'>" if anim else ""
                    scores = "".join(f"<br>{esc(label)}: {v:.3f}" for label, v in cell_scores(r, columns))
                    parts.append(f"<td>{img}<span class='scores'>{scores}</span>"
                                 f"<br><span class='muted'>seed {r.cell.seed}</span></td>")
                elif r.status == "failed":
                    log = r.record.get("log") or str(r.cell.log_path)
                    parts.append(f"<td class='failed'>failed: <a href='{esc(_rel(log, root))}'>log</a></td>")
                else:
                    parts.append(f"<td class='muted'>{esc(r.status)}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_report(out: Path, cells: Sequence[Cell], methods: Optional[Sequence[str]] = None,
                 clip_i_model: Optional[str] = None) -> Dict[str, Any]:
    """Write ``OUT/report/`` (table.md, table.csv, per_subject.csv/json, cells.csv, index.html);
    returns the table, its columns and the files written."""
    report = Path(out) / REPORT_DIR
    report.mkdir(parents=True, exist_ok=True)
    methods = list(methods) if methods else list(dict.fromkeys(c.method for c in cells))
    results = collect(cells)
    subjects = per_subject(results)
    columns = table_columns(results, clip_i_model)
    table = summary_table(subjects, methods, [k for _, k in columns])
    counts: Dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1

    (report / "table.md").write_text(format_markdown(table, columns) + "\n")
    with open(report / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "column", "metric", "mean", "std", "n_subjects"])
        for method, row in table.items():
            for label, key in columns:
                e = row[key]
                w.writerow([method, label, key, e["mean"], e["std"], e["n"]])
    all_keys = sorted({k for v in subjects.values() for k in v["metrics"]})
    with open(report / "per_subject.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "subject", "prompts", *all_keys])
        for (method, subject), v in sorted(subjects.items(), key=lambda kv: (methods.index(kv[0][0])
                                                                          if kv[0][0] in methods else 99, kv[0][1])):
            w.writerow([method, subject, v["prompts"], *(v["metrics"].get(k, "") for k in all_keys)])
    (report / "per_subject.json").write_text(json.dumps(
        [{"method": m, "subject": s, **v} for (m, s), v in subjects.items()], indent=2))
    cell_keys = sorted({k for r in results for k in r.metrics})
    with open(report / "cells.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "prompt", "method", "seed", "status", "elapsed_s", "folder", "log", *cell_keys])
        for r in results:
            w.writerow([r.cell.subject, r.cell.prompt, r.cell.method, r.cell.seed, r.status,
                        r.record.get("elapsed_s", ""), r.cell.out, r.record.get("log", ""),
                        *(r.metrics.get(k, "") for k in cell_keys)])
    (report / "report.json").write_text(json.dumps(
        {"columns": [{"label": label, "metric": key} for label, key in columns], "table": table, "counts": counts,
         "std": "sample standard deviation over subjects (n-1)"}, indent=2))
    page = write_html(report / "index.html", results, methods, table, columns, counts)
    return {"table": table, "columns": columns, "counts": counts, "markdown": format_markdown(table, columns),
            "dir": report, "html": page}
