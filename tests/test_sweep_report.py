"""The sweep's report: numbers on hand-made eval.json files."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest

from threestudio_dreambooth3d.sweep.cell import write_record
from threestudio_dreambooth3d.sweep.dataset import Subject
from threestudio_dreambooth3d.sweep.plan import DONE, FAILED
from threestudio_dreambooth3d.sweep.report import mean_std, short_model_name, write_report

from fakes import CLIP_MODELS, fake_eval, finish_cell, plan_sweep


def test_mean_std_by_hand():
    assert mean_std([]) == (None, None)
    assert mean_std([0.5]) == (0.5, None)
    mean, std = mean_std([0.75, 0.5, 1.0])
    assert mean == pytest.approx(0.75) and std == pytest.approx(0.25)  # sqrt((0 + 1/16 + 1/16) / 2)


def test_short_model_names():
    assert [short_model_name(m) for m in CLIP_MODELS] == ["ViT-B/16", "ViT-B/32", "ViT-L/14"]
    assert short_model_name("/models/my-clip/") == "my-clip"


def test_report_table_is_mean_and_std_over_subjects_of_per_subject_means(tmp_path):
    """3 subjects x 2 prompts x 2 methods; one cell of method B failed, one eval never ran."""
    subjects = [Subject(n, tmp_path / n, "toy") for n in ("s1", "s2", "s3")]
    prompts = {s.name: ["a {identifier} {class}", "a {identifier} {class} in the snow"] for s in subjects}
    cells = plan_sweep(tmp_path, subjects=subjects, prompts=prompts, methods=("A", "B"))
    # R-precision ViT-B/16 per prompt. A: s1 (0.5, 1.0) s2 (0.25, 0.75) s3 (1.0, 1.0) -> 0.75, 0.5, 1.0
    # B: s1 (0.0, 0.5) s2 failed + not run, s3 (0.5, 0.5) -> 0.25, 0.5
    values = {("A", "s1"): (0.5, 1.0), ("A", "s2"): (0.25, 0.75), ("A", "s3"): (1.0, 1.0),
              ("B", "s1"): (0.0, 0.5), ("B", "s3"): (0.5, 0.5)}
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    for i in range(4):  # a threestudio test frame: rgb (red) | normal | opacity (blue)
        frame = Image.new("RGB", (96, 32), (0, 0, 255))
        frame.paste((200, 10 * i, 0), (0, 0, 32, 32))
        frame.save(frames / f"{i}.png")
    for c in cells:
        k = (c.method, c.subject)
        if k == ("B", "s2"):
            if "snow" not in c.prompt:
                write_record(c, {"status": FAILED, "fingerprint": c.fingerprint, "log": str(c.log_path),
                                 "error": "boom"})
            continue
        v = values[k][1 if "snow" in c.prompt else 0]
        data = fake_eval(c, r_prec=v, janus=0.5 if c.method == "A" else 0.0)
        data["clip"][CLIP_MODELS[1]]["clip_i"] = 0.1 * (1 + ["s1", "s2", "s3"].index(c.subject))
        data["views"]["files"] = [str(p) for p in sorted(frames.glob("*.png"))]
        finish_cell(c, data=data)

    rep = write_report(tmp_path / "sweep", cells)
    assert [label for label, _ in rep["columns"]] == ["R-precision ViT-B/16", "R-precision ViT-B/32",
                                                       "R-precision ViT-L/14", "CLIP-I (ViT-B/32)", "DINO",
                                                       "Janus (ViT-B/32) ↓"]
    assert rep["table"]["B"][f"janus:{CLIP_MODELS[1]}"]["mean"] == 0.0
    a16, b16 = rep["table"]["A"][f"r_precision:{CLIP_MODELS[0]}"], rep["table"]["B"][f"r_precision:{CLIP_MODELS[0]}"]
    assert (a16["mean"], a16["std"], a16["n"]) == (pytest.approx(0.75), pytest.approx(0.25), 3)
    assert (b16["mean"], b16["std"], b16["n"]) == (pytest.approx(0.375), pytest.approx(0.125 * math.sqrt(2)), 2)
    clip_i = rep["table"]["A"][f"clip_i:{CLIP_MODELS[1]}"]  # 0.1, 0.2, 0.3 over subjects
    assert clip_i["mean"] == pytest.approx(0.2) and clip_i["std"] == pytest.approx(0.1)
    assert rep["counts"] == {DONE: 10, FAILED: 1, "not run": 1}

    report = tmp_path / "sweep" / "report"
    md = (report / "table.md").read_text()
    assert ("| A | 0.750 ± 0.250 | 0.750 ± 0.250 | 0.750 ± 0.250 | 0.200 ± 0.100 | 0.400 ± 0.000 | 0.500 ± 0.000 "
            "| 3 |") in md
    assert "| B | 0.375 ± 0.177 |" in md and md.rstrip().endswith("| 2 |")
    rows = list(csv.DictReader(open(report / "per_subject.csv")))
    assert [(r["method"], r["subject"], r["prompts"]) for r in rows] == [
        ("A", "s1", "2"), ("A", "s2", "2"), ("A", "s3", "2"), ("B", "s1", "2"), ("B", "s3", "2")]
    assert float(rows[1][f"r_precision:{CLIP_MODELS[0]}"]) == pytest.approx(0.5)
    per_json = json.loads((report / "per_subject.json").read_text())
    assert {(r["method"], r["subject"]) for r in per_json} == {(r["method"], r["subject"]) for r in rows}
    cells_csv = list(csv.DictReader(open(report / "cells.csv")))
    failed = [r for r in cells_csv if r["status"] == FAILED]
    assert len(failed) == 1 and failed[0]["log"].endswith("cell.log") and failed[0]["seed"]

    page = (report / "index.html").read_text()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) == 10 and all((report / s).is_file() for s in srcs)
    with Image.open(report / srcs[0]) as anim:  # the turntable plays: 4 frames, each cut to its rgb panel
        assert anim.n_frames == 4 and anim.size == (128, 128) and anim.info["loop"] == 0
        for i in range(4):
            anim.seek(i)
            r, g, b = anim.convert("RGB").getpixel((64, 64))
            assert r > 150 and b < 60 and abs(g - 10 * i) < 12  # frame i, in order
    # side by side: a row per subject x prompt, a cell per method, each with its scores under the turntable
    row = page[page.index("<td>a sks toy in the snow</td>"):]
    row = row[: row.index("</tr>")]
    assert row.count("<img ") == 2 and "R-precision ViT-B/16: 1.000" in row and "R-precision ViT-B/16: 0.500" in row
    assert "Janus (ViT-B/32) ↓: 0.500" in row and "Janus (ViT-B/32) ↓: 0.000" in row
    logs = re.findall(r"failed: <a href='([^']+)'", page)
    assert len(logs) == 1 and (report / logs[0]).resolve() == Path(next(
        c for c in cells if c.method == "B" and c.subject == "s2" and "snow" not in c.prompt).log_path).resolve()
    assert "0.375 ± 0.177" in page
