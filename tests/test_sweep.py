"""``dreambooth3d sweep`` without threestudio: the dataset layout, cell planning and seeds,
the executors with a fake cell function (ours and submitit's local executor), reruns,
and the report's numbers on hand-made eval.json files."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import threading
import time
from pathlib import Path

import pytest

from threestudio_dreambooth3d.sweep.cell import write_record
from threestudio_dreambooth3d.sweep.dataset import (
    Subject, SweepInputError, check_template, parse_prompts_and_classes, parse_subject_spec, read_dreambooth_dataset,
)
from threestudio_dreambooth3d.sweep.executors import LocalGPUExecutor, run_cells
from threestudio_dreambooth3d.sweep.plan import (
    DONE, FAILED, SweepOptions, cell_seed, is_finished, plan_cells, read_record, write_prompt_sets,
)
from threestudio_dreambooth3d.sweep.progress import Progress, estimate_remaining
from threestudio_dreambooth3d.sweep.report import mean_std, short_model_name, write_report
from threestudio_dreambooth3d.sweep.run import run_sweep

# The layout of google/dreambooth's dataset/prompts_and_classes.txt, cut down
PROMPTS_AND_CLASSES = """Classes

subject_name,class
backpack,backpack
bear_plushie,stuffed animal
dog,dog

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} on top of pink fabric'.format(unique_token, class_token),
'a cube shaped {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
'a cube shaped {0} {1}'.format(unique_token, class_token)
]
"""
CLIP_MODELS = ["openai/clip-vit-base-patch16", "openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14"]
DINO = "facebook/dino-vits16"


def _dataset(root: Path, big: bool = False) -> Path:
    """A tiny synthetic dataset in the DreamBooth layout (never the real photos)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES)
    for i, name in enumerate(["backpack", "bear_plushie", "dog"]):
        (root / name).mkdir()
        for j in range(3):
            Image.new("RGB", (80, 64), (40 * i, 60 * j, 100)).save(root / name / f"0{j}.jpg")
    return root


# --- the dataset --------------------------------------------------------------------------

def test_reads_the_dreambooth_layout_with_multiword_classes_and_live_prompts(tmp_path):
    ds = read_dreambooth_dataset(_dataset(tmp_path / "dataset"))
    by_name = {s.name: s for s in ds.subjects}
    assert list(by_name) == ["backpack", "bear_plushie", "dog"]
    assert by_name["bear_plushie"].class_noun == "stuffed animal" and not by_name["bear_plushie"].live
    assert by_name["dog"].live and not by_name["backpack"].live
    assert by_name["dog"].folder == (tmp_path / "dataset" / "dog").resolve()
    # dogs and cats get the live-subject list, everything else the object list
    assert ds.prompts_for(by_name["dog"])[1] == "a {identifier} {class} wearing a red hat"
    assert ds.prompts_for(by_name["bear_plushie"])[1] == "a {identifier} {class} on top of pink fabric"
    # a checkout of google/dreambooth (the file under dataset/) works too, and --subjects picks
    ds2 = read_dreambooth_dataset(tmp_path, only=["dog", "bear_plushie"])
    assert [s.name for s in ds2.subjects] == ["dog", "bear_plushie"]


def test_dataset_errors_name_the_problem(tmp_path):
    root = _dataset(tmp_path / "dataset")
    with pytest.raises(SweepInputError, match="'cat' is not in .*prompts_and_classes.txt"):
        read_dreambooth_dataset(root, only=["cat"])
    import shutil

    shutil.rmtree(root / "dog")
    with pytest.raises(SweepInputError, match="lists subject 'dog' but .*dog is not a folder"):
        read_dreambooth_dataset(root)
    with pytest.raises(SweepInputError, match="No prompts_and_classes.txt"):
        read_dreambooth_dataset(root / "backpack")
    with pytest.raises(SweepInputError, match=r"prompts_and_classes.txt:4: expected 'subject_name,class'"):
        parse_prompts_and_classes("Classes\n\nsubject_name,class\nbackpack\n")


def test_templates_and_subject_specs():
    assert check_template("a {identifier} {class} in the snow")
    with pytest.raises(SweepInputError, match=r"lacks \{class\}"):
        check_template("a {identifier} dog")
    with pytest.raises(SweepInputError, match=r"uses \{subject\}"):
        check_template("a {identifier} {class} and {subject}")


def test_subject_spec_keeps_a_multiword_class(tmp_path):
    (tmp_path / "bear").mkdir()
    s = parse_subject_spec(f"{tmp_path / 'bear'}:stuffed  animal")
    assert (s.name, s.class_noun, s.live) == ("bear", "stuffed animal", False)
    with pytest.raises(SweepInputError, match="expected FOLDER:CLASS"):
        parse_subject_spec(str(tmp_path / "bear"))
    with pytest.raises(SweepInputError, match="is not a folder"):
        parse_subject_spec(f"{tmp_path / 'nope'}:dog")


# --- planning -----------------------------------------------------------------------------

def _subjects(tmp_path):
    return [Subject("dog", tmp_path / "dog", "dog", True), Subject("bear", tmp_path / "bear", "stuffed animal")]


def _plan(tmp_path, subjects=None, methods=("dreambooth3d", "latentnerf"), prompts=None, **kw):
    subjects = subjects or _subjects(tmp_path)
    prompts = prompts or {s.name: ["a {identifier} {class}", "a {identifier} {class} in the snow"] for s in subjects}
    opts = SweepOptions(out=tmp_path / "sweep", preset="smoke", **kw)
    return plan_cells(opts, subjects, prompts, list(methods), {s.name: "abc" for s in subjects})


def test_each_cell_pins_a_seed_from_its_key_not_its_position(tmp_path):
    cells = _plan(tmp_path)
    assert len(cells) == 2 * 2 * 2
    seeds = {c.key: c.seed for c in cells}
    assert len(set(seeds.values())) == len(cells)
    # other subjects/methods/orders around it do not change a cell's seed
    alone = _plan(tmp_path, subjects=list(reversed(_subjects(tmp_path)))[:1], methods=("latentnerf",))
    assert all(seeds[c.key] == c.seed for c in alone)
    assert cells[0].seed == cell_seed(0, "dog", "a sks dog", "dreambooth3d")
    # the seed reaches the run, and the base seed changes every cell's
    assert cells[0].run_argv[cells[0].run_argv.index("--seed") + 1] == str(cells[0].seed)
    assert all(c.seed != seeds[c.key] for c in _plan(tmp_path, seed=1))


def test_cell_commands_are_run_and_eval_of_one_folder(tmp_path):
    bear = next(c for c in _plan(tmp_path, clip_models=["m1", "m2"]) if c.subject == "bear" and c.method == "latentnerf")
    r, e = bear.run_argv, bear.eval_argv
    assert r[1:4] == ["-m", "threestudio_dreambooth3d.cli", "run"] and e[3] == "eval"
    assert r[r.index("--class-noun") + 1] == "stuffed animal"  # one argument, not two
    assert r[r.index("--prompt") + 1] == "a sks stuffed animal" == e[e.index("--prompt") + 1]
    assert r[r.index("--method") + 1] == "latentnerf" and r[r.index("--preset") + 1] == "smoke"
    assert r[r.index("--out") + 1] == e[e.index("--run") + 1] == bear.out
    assert e[e.index("--clip-models") + 1: e.index("--clip-models") + 3] == ["m1", "m2"]
    assert e[e.index("--class-noun") + 1] == "stuffed animal"
    # R-precision retrieves among the subject's prompts: the sweep's, then the dataset's list for its class
    prompt_file = Path(e[e.index("--prompts") + 1])
    assert prompt_file == (tmp_path / "sweep" / "prompts" / "bear.txt").resolve()
    assert Path(bear.out).relative_to((tmp_path / "sweep").resolve()).parts == ("cells", "bear", "a-sks-stuffed-animal",
                                                                               "latentnerf")
    # a `run` without --method (before the baselines exist) gets no --method
    opts = SweepOptions(out=tmp_path / "s")
    c = plan_cells(opts, _subjects(tmp_path)[:1], {"dog": ["a {identifier} {class}"]}, ["dreambooth3d"], {},
                   method_flag=False)[0]
    assert "--method" not in c.run_argv


def test_prompt_sets_are_written_per_subject_and_part_of_every_cells_inputs(tmp_path):
    opts = SweepOptions(out=tmp_path / "s")
    subjects = _subjects(tmp_path)[:1]  # dog
    one = {"dog": ["a {identifier} {class} wearing a hat"]}
    write_prompt_sets(opts, subjects, one)
    lines = (tmp_path / "s" / "prompts" / "dog.txt").read_text().splitlines()
    assert lines[0] == "a sks dog wearing a hat" and "a sks dog in a chef outfit" in lines  # live list: a dog
    assert len(lines) == len(set(lines)) == 26
    # adding a prompt for the subject changes the retrieval set of its other cells: they are not finished
    before = plan_cells(opts, subjects, one, ["dreambooth3d"], {})[0]
    after = plan_cells(opts, subjects, {"dog": one["dog"] + ["a {identifier} {class} on the moon"]},
                       ["dreambooth3d"], {})[0]
    assert before.key == after.key and before.eval_argv == after.eval_argv
    assert before.fingerprint != after.fingerprint


def test_finished_means_done_for_the_same_inputs_with_scores(tmp_path):
    cell = _plan(tmp_path)[0]
    assert not is_finished(cell)
    write_record(cell, {"status": DONE, "fingerprint": cell.fingerprint})
    assert not is_finished(cell)  # no eval.json yet
    cell.eval_json.parent.mkdir(parents=True)
    cell.eval_json.write_text("{}")
    assert is_finished(cell)
    write_record(cell, {"status": FAILED, "fingerprint": cell.fingerprint})
    assert not is_finished(cell)
    write_record(cell, {"status": DONE, "fingerprint": cell.fingerprint})
    changed = _plan(tmp_path, overrides=["stage1:trainer.max_steps=3"])[0]
    assert changed.key == cell.key and not is_finished(changed)


# --- executors, with a fake cell function ---------------------------------------------------

def _fake_eval(cell, r_prec: float = 0.5, janus: float = 0.25) -> dict:
    return {"clip": {m: {"r_precision": r_prec, "clip_t": 0.2, "clip_i": 0.7, "janus": {"janus": janus}}
                     for m in CLIP_MODELS},
            "dino": {DINO: {"dino": 0.4}}, "views": {"files": []}}


def _finish(cell, gpu=None, data=None):
    cell.eval_json.parent.mkdir(parents=True, exist_ok=True)
    cell.eval_json.write_text(json.dumps(data or _fake_eval(cell)))
    return write_record(cell, {"key": cell.key, "status": DONE, "fingerprint": cell.fingerprint, "gpu": gpu,
                               "elapsed_s": 1.0, "log": str(cell.log_path)})


def test_local_executor_runs_one_cell_per_gpu_and_a_failure_does_not_stop_the_rest(tmp_path):
    cells = _plan(tmp_path)
    lock, active, seen = threading.Lock(), [0], {"max": 0, "gpus": {}}

    def fake(cell, gpu):
        with lock:
            active[0] += 1
            seen["max"] = max(seen["max"], active[0])
            assert gpu not in seen["gpus"].values() or True
            seen["gpus"][cell.key] = gpu
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        if cell.subject == "bear" and cell.method == "latentnerf":
            return write_record(cell, {"key": cell.key, "status": FAILED, "fingerprint": cell.fingerprint,
                                       "log": str(cell.log_path), "error": "boom", "elapsed_s": 1.0})
        if cell.subject == "dog" and cell.method == "latentnerf" and "snow" in cell.prompt:
            raise RuntimeError("the cell function itself crashed")
        return _finish(cell, gpu)

    stream = io.StringIO()
    progress = Progress(tmp_path / "sweep", len(cells), 0, 2, stream=stream)
    records = run_cells(cells, LocalGPUExecutor(["3", "5"]), fake, progress=progress, poll_s=0.01)
    assert seen["max"] == 2 and set(seen["gpus"].values()) == {"3", "5"}
    statuses = {k: r["status"] for k, r in records.items()}
    assert list(statuses.values()).count(FAILED) == 3 and list(statuses.values()).count(DONE) == 5
    crashed = records["dog/a-sks-dog-in-the-snow/latentnerf"]
    assert "the cell function itself crashed" in crashed["error"] and crashed["log"].endswith("cell.log")
    assert read_record(next(c for c in cells if c.key == crashed["key"]))["status"] == FAILED
    text = stream.getvalue()
    assert "sweep: FAILED bear/a-sks-stuffed-animal/latentnerf: boom (log: " in text
    assert re.search(r"sweep: 5/8 done \(0 already\), 0 running, 0 queued, 3 failed, 0 to go", text)
    state = json.loads((tmp_path / "sweep" / "progress.json").read_text())  # for watchers elsewhere
    assert (state["done"], state["failed"], state["to_go"]) == (5, 3, 0)
    assert {f["key"] for f in state["failures"]} == {k for k, r in records.items() if r["status"] == FAILED}


def test_no_more_cells_in_flight_than_the_executor_has_slots(tmp_path):
    """Cluster jobs or local GPUs: the loop itself caps what is submitted and not finished."""
    cells = _plan(tmp_path)

    class Handle:
        def __init__(self, ex, cell):
            self.ex, self.cell, self.polls = ex, cell, 0

        def done(self):
            self.polls += 1
            return self.polls > 2

        def result(self):
            self.ex.inflight.discard(self.cell.key)
            return _finish(self.cell)

    class CountingExecutor:
        slots = 3

        def __init__(self):
            self.inflight, self.most = set(), 0

        def submit(self, fn, cell):
            self.inflight.add(cell.key)
            self.most = max(self.most, len(self.inflight))
            return Handle(self, cell)

        def close(self):
            pass

    ex = CountingExecutor()
    records = run_cells(cells, ex, poll_s=0)
    assert ex.most == 3 and len(records) == len(cells) and not ex.inflight


def test_rerun_retries_only_failed_and_missing_cells(tmp_path):
    cells = _plan(tmp_path)
    calls, failing = [], {cells[1].key, cells[4].key}

    def flaky(cell, gpu):
        calls.append(cell.key)
        if cell.key in failing:
            return write_record(cell, {"key": cell.key, "status": FAILED, "fingerprint": cell.fingerprint,
                                       "log": str(cell.log_path), "error": "out of memory"})
        return _finish(cell, gpu)

    out = tmp_path / "sweep"
    first = run_sweep(out, cells[:6], LocalGPUExecutor([None]), flaky, stream=io.StringIO(), poll_s=0.01)
    assert len(first["ran"]) == 6 and {f["key"] for f in first["progress"].failures} == failing
    calls.clear()
    failing.clear()
    second = run_sweep(out, cells, LocalGPUExecutor([None]), flaky, stream=io.StringIO(), poll_s=0.01)
    assert sorted(calls) == sorted([cells[1].key, cells[4].key] + [c.key for c in cells[6:]])
    assert not second["progress"].failures and all(is_finished(c) for c in cells)
    calls.clear()
    third = run_sweep(out, cells, None, flaky, stream=io.StringIO())
    assert calls == [] and third["ran"] == []
    assert third["report"]["counts"] == {DONE: 8}


def test_submitit_local_executor_runs_cells_as_jobs(tmp_path, monkeypatch):
    """The cluster path, with submitit's LocalExecutor: each cell a job in its own process."""
    submitit = pytest.importorskip("submitit")
    # a dead job leaves no result file; submitit waits 15 s for a slow shared disk (its own tests set 0 too)
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 0)
    from threestudio_dreambooth3d.sweep.executors import SubmititExecutor

    cells = _plan(tmp_path, methods=("dreambooth3d",), subjects=_subjects(tmp_path)[1:])

    def fake_job(cell, gpu):  # pickled by value into the job (a nested function)
        import json
        import os

        from threestudio_dreambooth3d.sweep.cell import write_record

        if "snow" in cell.prompt and cell.subject == "bear":
            os._exit(3)  # the job dies without a word: the executor must still record it
        cell.eval_json.parent.mkdir(parents=True, exist_ok=True)
        cell.eval_json.write_text(json.dumps({"clip": {"m": {"r_precision": 1.0}}, "dino": {}}))
        return write_record(cell, {"key": cell.key, "status": "done", "fingerprint": cell.fingerprint,
                                   "pid": os.getpid(), "elapsed_s": 0.5})

    ex = SubmititExecutor(tmp_path / "submitit", "local", {"timeout_min": 5, "slurm_partition": "ignored"})
    result = run_sweep(tmp_path / "sweep", cells, ex, fake_job, stream=io.StringIO(), poll_s=0.1)
    records = result["records"]
    assert len(records) == 2
    dead = records["bear/a-sks-stuffed-animal-in-the-snow/dreambooth3d"]
    assert dead["status"] == FAILED and "submitit" in dead["log"] and Path(dead["log"]).parent.is_dir()
    done = [r for r in records.values() if r["status"] == DONE]
    import os

    assert len(done) == 1 and done[0]["pid"] != os.getpid()  # the job ran in its own process
    assert result["report"]["counts"] == {DONE: 1, FAILED: 1}


def test_rerun_reattaches_to_a_slurm_job_still_running_instead_of_submitting_again(tmp_path):
    pytest.importorskip("submitit")
    from threestudio_dreambooth3d.sweep.executors import SubmititExecutor

    cells = _plan(tmp_path, methods=("dreambooth3d",))[:3]
    states = {"41": "RUNNING", "42": "COMPLETED", "43": "PENDING"}
    by_job = {}

    class FakeSlurmJob:  # what submitit.SlurmJob(folder, job_id) answers, without a cluster
        def __init__(self, folder, job_id):
            self.job_id, self.state = job_id, states.get(job_id, "PENDING")
            self.paths = type("P", (), {"stderr": Path(folder.replace("%j", job_id)) / "log.err"})()

        def done(self):
            return True

        def result(self):
            return _finish(by_job[self.job_id])

    ex = SubmititExecutor(tmp_path / "submitit", "local")
    ex._job_class = FakeSlurmJob  # as with cluster="slurm"
    submitted = []

    def fake_submit(fn, cell, gpu):
        submitted.append(cell.key)
        job = FakeSlurmJob(str(ex.folder / "%j"), str(100 + len(submitted)))
        by_job[job.job_id] = cell
        return job

    ex.executor.submit = fake_submit
    # job 41: this cell, still running -> attach; job 42: ended without a result -> submit anew;
    # job 43: pending, but for other inputs (the plan changed) -> submit anew
    ex.jobs_file.write_text(json.dumps({cells[0].key: {"job_id": "41", "fingerprint": cells[0].fingerprint},
                                        cells[1].key: {"job_id": "42", "fingerprint": cells[1].fingerprint},
                                        cells[2].key: {"job_id": "43", "fingerprint": "old"}}))
    by_job["41"] = cells[0]
    records = run_cells(cells, ex, poll_s=0)
    assert submitted == [cells[1].key, cells[2].key]
    assert all(r["status"] == DONE for r in records.values()) and len(records) == 3
    jobs = json.loads(ex.jobs_file.read_text())
    assert jobs[cells[1].key]["job_id"] == "101" and jobs[cells[0].key]["job_id"] == "41"


# --- report -------------------------------------------------------------------------------

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
    cells = _plan(tmp_path, subjects=subjects, prompts=prompts, methods=("A", "B"))
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
        data = _fake_eval(c, r_prec=v, janus=0.5 if c.method == "A" else 0.0)
        data["clip"][CLIP_MODELS[1]]["clip_i"] = 0.1 * (1 + ["s1", "s2", "s3"].index(c.subject))
        data["views"]["files"] = [str(p) for p in sorted(frames.glob("*.png"))]
        _finish(c, data=data)

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


def test_progress_estimate():
    assert estimate_remaining([], 5, 2) is None
    assert estimate_remaining([10.0, 30.0], 4, 2) == pytest.approx(40.0)  # mean 20 s x 4 cells / 2 at a time
    # two of the four are running, for 5 s and for longer than the mean: (80 - 5 - 20) / 2
    assert estimate_remaining([10.0, 30.0], 4, 2, [5.0, 50.0]) == pytest.approx(27.5)


# --- the command line -----------------------------------------------------------------------

def _fake_threestudio(tmp_path) -> Path:
    root = tmp_path / "threestudio"
    (root / "threestudio").mkdir(parents=True)
    (root / "launch.py").write_text("")
    (root / "threestudio" / "__init__.py").write_text("")
    return root


def test_cli_dry_run_lists_cells_and_bad_input_fails_before_any_work(tmp_path, capsys):
    from threestudio_dreambooth3d.cli import main

    root = _dataset(tmp_path / "dataset")
    base = ["sweep", "--dataset", str(root), "--out", str(tmp_path / "sweep"), "--threestudio",
            str(_fake_threestudio(tmp_path)), "--preset", "smoke"]
    assert main(base + ["--subjects", "bear_plushie", "dog", "--max-prompts", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    # every method `run --method` offers: 2 subjects x 2 prompts x 3 methods
    assert "12 cells = 2 subject(s)" in out and "x 3 method(s)" in out and "0 finished, 12 to run" in out
    assert f"run  bear_plushie/a-sks-stuffed-animal-on-top-of-pink-fabric/dreambooth3d  seed=" \
           f"{cell_seed(0, 'bear_plushie', 'a sks stuffed animal on top of pink fabric', 'dreambooth3d')}" in out
    assert "dog/a-sks-dog-wearing-a-red-hat/dreambooth3d" in out
    assert not (tmp_path / "sweep" / "cells").exists()

    for extra, message in (
        (["--prompt", "a {identifier} dog"], r"lacks \{class\}"),
        (["--methods", "nerfstudio"], "'nerfstudio': `dreambooth3d run` offers"),
        (["--subjects", "cat"], "'cat' is not in"),
    ):
        assert main(base + extra) == 2
        assert re.search(message, capsys.readouterr().err), extra
    assert main(["sweep", "--out", str(tmp_path / "sweep")]) == 2
    assert "--dataset DIR (DreamBooth layout) or --subject FOLDER:CLASS" in capsys.readouterr().err
    (root / "dog" / "notes.docx").write_text("x")
    assert main(base) == 2
    assert "notes.docx is not an image" in capsys.readouterr().err
    assert not (tmp_path / "sweep" / "cells").exists()
