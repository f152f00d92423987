"""``dreambooth3d sweep --preset smoke`` against the real threestudio, on the CPU.

2 synthetic subjects in the DreamBooth dataset layout (one with the two-word class
"stuffed animal") x 1 prompt (the dataset's first, from its live / object list) x 2
methods (the first two ``run --method`` offers: dreambooth3d and the DreamBooth+Fusion
baseline), each cell a real ``run`` + ``eval`` with tiny CLIP/DINO; then the same command
again, which must start no cell.
"""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TIMEOUT = 3600

PROMPTS_AND_CLASSES = """Classes

subject_name,class
bear_plushie,stuffed animal
dog,dog

Prompts

Object Prompts

prompt_list = [
'a {0} {1} on top of pink fabric'.format(unique_token, class_token),
'a {0} {1} in the jungle'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
'a {0} {1} in the jungle'.format(unique_token, class_token)
]
"""


def _methods():
    from threestudio_dreambooth3d.pipeline.context import METHODS

    return list(METHODS[:2])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, threestudio_root):
    from threestudio_dreambooth3d.tiny_models.clip import save_tiny_clip, save_tiny_dino
    from threestudio_dreambooth3d.tiny_models.sd import make_subject_images

    tmp = tmp_path_factory.mktemp("sweep")
    dataset = tmp / "dataset"
    for name, color in (("dog", (220, 30, 30)), ("bear_plushie", (30, 30, 220))):
        make_subject_images(dataset / name, n=3, size=64, color=color, ext="jpg")  # the dataset's photos are JPEGs
    (dataset / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES)
    methods = _methods()
    out = tmp / "out"
    argv = [sys.executable, "-m", "threestudio_dreambooth3d.cli", "sweep", "--dataset", str(dataset),
            "--max-prompts", "1", "--methods", *methods, "--preset", "smoke", "--out", str(out),
            "--threestudio", str(threestudio_root), "--clip-models", str(save_tiny_clip(tmp / "clip")),
            "--dino-model", str(save_tiny_dino(tmp / "dino")), "--progress-every", "600"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    cells = sorted(out.glob("cells/*/*/*/cell.json"))
    stamps = {p: (p.stat().st_mtime_ns, (p.parent / "manifest.json").stat().st_mtime_ns) for p in cells}
    second = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    return {"out": out, "methods": methods, "first": first.stdout, "second": second.stdout, "cells": cells,
            "stamps": stamps}


def test_every_cell_is_a_finished_run_with_its_own_seed(sweep):
    from threestudio_dreambooth3d.sweep.plan import cell_seed

    methods = sweep["methods"]
    assert len(sweep["cells"]) == 2 * len(methods)
    prompts = {"dog": "a sks dog wearing a red hat", "bear_plushie": "a sks stuffed animal on top of pink fabric"}
    for path in sweep["cells"]:
        rec = json.loads(path.read_text())
        subject, _, method = Path(rec["key"]).parts
        assert rec["status"] == "done" and method in methods
        assert rec["seed"] == cell_seed(0, subject, prompts[subject], method)
        manifest = json.loads((path.parent / "manifest.json").read_text())
        assert manifest["steps"] and all(s["status"] == "done" for s in manifest["steps"].values())
        finetune = manifest["steps"]["finetune"]["inputs"]["command"]
        assert finetune[finetune.index("--seed") + 1] == str(rec["seed"])  # the cell's seed reached the run
        assert finetune[finetune.index("--class-noun") + 1] == ("stuffed animal" if subject == "bear_plushie" else "dog")
        scores = json.loads((path.parent / "eval" / "eval.json").read_text())
        assert scores["prompt"] == prompts[subject] and scores["views"]["count"] >= 2
        # scored: the final stage's frames, retrieved among the subject's other prompts and its bare class
        final = "stage3" if method == "dreambooth3d" else "baseline"
        assert scores["views"]["stage"] == final and f"/{final}/" in scores["views"]["folder"]
        noun = "stuffed animal" if subject == "bear_plushie" else "dog"
        others = scores["distractors"]["prompts"]
        assert f"a {noun} in the jungle" in others and f"a {noun}" in others
        assert scores["distractors"]["subject_prompts"].endswith(f"prompts/{subject}.txt")
        for model in scores["clip"].values():  # a Janus score per CLIP model, from a turntable with a back view
            assert model["janus"]["back_frames"] >= 1 and 0.0 <= model["janus"]["janus"] <= 1.0


def test_report_has_the_table_and_a_frame_grid(sweep):
    report = sweep["out"] / "report"
    table = (report / "table.md").read_text()
    for method in sweep["methods"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| {method} |"))
        assert row.rstrip().endswith("| 2 |")  # both subjects behind every entry
        assert re.search(r"\| \d\.\d{3} ± \d\.\d{3} \|", row)
    header = table.splitlines()[0]
    assert "R-precision clip" in header and "DINO" in header and "Janus (clip) ↓" in header
    rows = list(csv.DictReader(open(report / "per_subject.csv")))
    assert sorted((r["method"], r["subject"]) for r in rows) == sorted(
        (m, s) for m in sweep["methods"] for s in ("bear_plushie", "dog"))
    page = (report / "index.html").read_text()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) == len(sweep["cells"]) and all((report / s).is_file() for s in srcs)
    assert all(s.endswith(".gif") for s in srcs)  # each method's turntable playing, side by side
    assert page.count("Janus (clip) ↓: ") == len(sweep["cells"])  # the scores under each
    assert "sweep: done dog/" in sweep["first"]


def test_rerun_skips_every_finished_cell(sweep):
    n = len(sweep["cells"])
    assert f"{n} finished, 0 to run" in sweep["second"]
    assert "sweep: done " not in sweep["second"] and "sweep: running" not in sweep["second"]
    for path, (cell_mtime, manifest_mtime) in sweep["stamps"].items():
        assert path.stat().st_mtime_ns == cell_mtime
        assert (path.parent / "manifest.json").stat().st_mtime_ns == manifest_mtime
