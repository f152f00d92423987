"""The app's page (Gradio): element ids, errors shown in the page, what a finished job shows."""
from __future__ import annotations

import pytest

from threestudio_dreambooth3d.cli.app import host_warning
from test_app import RED_TOY, new_job, wait_for  # noqa: F401  (the fake run and its fixture)
from test_app import fake  # noqa: F401

gr = pytest.importorskip("gradio")

from threestudio_dreambooth3d.app import jobs as J  # noqa: E402
from threestudio_dreambooth3d.app.ui import OUTPUTS, build  # noqa: E402

IDS = ["photos", "class_noun", "prompt", "preset", "method", "run", "stop", "jobs", "resume",
       "status", "pseudo_views", "turntable", "mesh", "download", "log"]


def handlers(page):
    return {f.name: f.fn for f in page.fns.values()}


def shown(result):
    """A button handler's result as {output: value}: (job id, *OUTPUTS, shown state, job list)."""
    return dict(zip(OUTPUTS, result[1:1 + len(OUTPUTS)]))


def test_the_page_has_every_element_the_browser_test_uses(fake):
    page = build(fake(), default_preset="smoke")
    blocks = {getattr(b, "elem_id", None): b for b in page.blocks.values()}
    assert set(IDS) <= set(blocks)
    assert blocks["preset"].value == "smoke"
    assert blocks["method"].choices == [(m, m) for m in ("dreambooth3d", "dreamboothfusion", "latentnerf")]
    assert isinstance(blocks["mesh"], gr.Model3D) and blocks["photos"].file_count == "multiple"


def test_bad_input_shows_an_error_in_the_page_not_a_traceback(fake, tmp_path):
    on_run = handlers(build(fake()))["on_run"]
    bad = tmp_path / "cat.png"
    bad.write_bytes(b"GIF89a not really")
    out = shown(on_run([str(p) for p in sorted(RED_TOY.iterdir())] + [str(bad)], "toy", "a sks toy", "smoke",
                       "dreambooth3d"))
    assert out["status"].startswith("error: 04_cat.png cannot be read as an image")
    assert "Traceback" not in out["log"] and str(tmp_path) not in out["status"]
    out = shown(on_run([], "toy", "a sks toy", "smoke", "dreambooth3d"))
    assert out["status"] == "error: no photos: add 3-6 photos of the subject (png/jpg/webp)"


def test_a_missing_threestudio_shows_doctors_table(fake):
    table = "this machine lacks what --preset smoke needs:\nthreestudio  MISSING  no threestudio found"
    on_run = handlers(build(fake(check=lambda preset, root: table)))["on_run"]
    out = shown(on_run([str(p) for p in sorted(RED_TOY.iterdir())], "toy", "a sks toy", "smoke", "dreambooth3d"))
    assert out["log"] == table and out["status"] == "error: this machine lacks what --preset smoke needs:"


def test_a_finished_job_shows_its_results_and_a_failed_one_its_failure(fake):
    m = fake()
    page = handlers(build(m))
    result = page["on_run"]([str(p) for p in sorted(RED_TOY.iterdir())], "toy", "a sks toy", "smoke",
                            "dreambooth3d")
    job = m.get(result[0])
    wait_for(lambda: (job.out / "child.pid").exists())
    (job.out / "go").touch()
    wait_for(lambda: job.state == J.FINISHED)
    out = shown(page["on_pick"](job.id, {}))
    assert out["status"].startswith(f"job {job.id}: finished — 'a sks toy' (toy, 4 photos, preset smoke, "
                                    "dreambooth3d)\n[4/4] summary: done")
    assert out["mesh"].endswith("results/mesh/model.glb") and out["download"].endswith("results.zip")
    assert out["log"] == ""
    failing = fake(root="other", mode="fail")
    page = handlers(build(failing))
    job = failing.get(page["on_run"]([str(p) for p in sorted(RED_TOY.iterdir())], "toy", "a sks toy", "smoke",
                                     "dreambooth3d")[0])
    wait_for(lambda: job.state == J.FAILED)
    out = shown(page["on_pick"](job.id, {}))
    assert out["log"].startswith("failed at step stage2") and "RuntimeError: the fake step broke" in out["log"]


def test_host_warning_for_an_open_address():
    assert host_warning("127.0.0.1") == ""
    assert "every network this machine is on" in host_warning("0.0.0.0")


def test_a_queued_job_shows_its_place(fake):
    from threestudio_dreambooth3d.app.ui import view

    m = fake()
    first, second = (new_job(m, f"a sks toy number {i}") for i in range(2))
    m.submit(first.id)
    m.submit(second.id)
    wait_for(lambda: first.state == J.RUNNING)
    assert view(m, second)["status"].startswith(f"job {second.id}: queued (position 1 in the queue) — ")
    assert view(m, first)["status"].startswith(f"job {first.id}: running — ")
