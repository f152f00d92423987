"""``dreambooth3d run --preset smoke`` end to end against the real threestudio, on the CPU.

One sequence of real runs (module fixture), as a user would live it:
1. a run killed (SIGKILL) right after stage 1 finished;
2. the same command again: stage 1 is not recomputed, the killed stage restarts cleanly,
   the run completes — its output folder is what the artefact tests inspect;
3. on a copy of that folder (so the tests still see step 2's results; a moved folder is
   not a changed input), a subject photo changed, the same command again: the finetune
   reruns (stopped once it is done, to keep the test short).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STEPS = ["finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export", "summary"]
TIMEOUT = 1500


def _argv(subject: Path, out: Path, threestudio_root: Path):
    return [sys.executable, "-m", "threestudio_dreambooth3d.cli", "run", "--subject", str(subject),
            "--class-noun", "dog", "--prompt", "a sks dog wearing a hat", "--preset", "smoke",
            "--out", str(out), "--threestudio", str(threestudio_root)]


def _manifest(out: Path) -> dict:
    try:
        return json.loads((out / "manifest.json").read_text())["steps"]
    except (OSError, ValueError, KeyError):
        return {}


def _run_until(argv, out: Path, log: Path, stop) -> None:
    """Start the CLI and SIGKILL its whole process group once ``stop(manifest_steps)`` holds."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if stop(_manifest(out)):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.3)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the run ended before the kill point:\n{log.read_text()[-4000:]}")


def _status(steps: dict, name: str):
    return steps.get(name, {}).get("status")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, subject_dir, threestudio_root):
    tmp = tmp_path_factory.mktemp("smoke")
    subject = Path(shutil.copytree(subject_dir, tmp / "subject"))
    out = tmp / "out"
    argv = _argv(subject, out, threestudio_root)

    # 1. killed once stage 2 has started
    _run_until(argv, out, tmp / "run1.log", lambda s: _status(s, "stage2") == "running")
    killed = _manifest(out)
    ckpt = out / "stage1" / "run" / "ckpts" / "last.ckpt"
    stage1_mtime = ckpt.stat().st_mtime_ns

    # 2. the same command completes
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    after = _manifest(out)

    # 3. a changed photo: the finetune reruns (killed once it finished)
    from PIL import Image

    moved = Path(shutil.copytree(out, tmp / "moved", symlinks=True))
    Image.new("RGB", (64, 64), (20, 20, 220)).save(sorted(subject.glob("*.png"))[0])
    _run_until(_argv(subject, moved, threestudio_root), moved, tmp / "run3.log",
               lambda s: _status(s, "stage1") == "running")
    changed = _manifest(moved)
    return {"out": out, "stdout": done.stdout, "killed": killed, "after": after, "changed": changed,
            "stage1_mtime": stage1_mtime, "stage1_mtime_after": ckpt.stat().st_mtime_ns if ckpt.exists() else None,
            "run3": (tmp / "run3.log").read_text(errors="replace")}


def test_killed_run_resumes_without_recomputing_stage1(smoke):
    killed, after, stdout = smoke["killed"], smoke["after"], smoke["stdout"]
    assert _status(killed, "stage1") == "done" and _status(killed, "stage2") == "running"
    assert "[1/7] finetune: skipped" in stdout and "[2/7] stage1: skipped" in stdout
    assert "[3/7] stage2: " in stdout and "interrupted last time; restarting cleanly" in stdout
    assert after["stage1"]["output_id"] == killed["stage1"]["output_id"]
    assert after["finetune"]["output_id"] == killed["finetune"]["output_id"]
    assert smoke["stage1_mtime_after"] is None or smoke["stage1_mtime_after"] == smoke["stage1_mtime"]
    for name in STEPS:  # a line per stage with its time
        assert re.search(rf"\] {name}: (done in \d+|skipped)", stdout), name


def test_changed_subject_photo_reruns_the_finetune(smoke):
    after, changed = smoke["after"], smoke["changed"]
    assert "[1/7] finetune: DreamBooth finetune on the photos (partial + full checkpoints): starting (inputs changed: subject photos)" \
        in smoke["run3"]
    assert changed["finetune"]["status"] == "done"
    assert changed["finetune"]["output_id"] != after["finetune"]["output_id"]
    assert changed["finetune"]["inputs"]["subject_sha256"] != after["finetune"]["inputs"]["subject_sha256"]


def test_manifest_lists_every_step_with_outputs(smoke):
    out, after = smoke["out"], smoke["after"]
    assert list(after) == STEPS
    for name, rec in after.items():
        assert rec["status"] == "done", name
        assert rec["outputs"] and all((out / p).exists() for p in rec["outputs"].values()), name
    assert all("launch.py" in after[s]["commands"][0] for s in ("stage1", "stage2", "stage3", "export"))


def test_checkpoints_and_pseudo_views_are_valid(smoke):
    import torch
    from PIL import Image

    from threestudio_dreambooth3d.core.checkpoints import read_meta
    from threestudio_dreambooth3d.core.pseudo_views import read_pseudo_views

    out, after = smoke["out"], smoke["after"]
    for name in ("partial", "full"):
        assert read_meta(out / after["finetune"]["outputs"][name])["name"] == name
    assert read_meta(out / after["multiview_finetune"]["outputs"]["multiview"])["num_extra_images"] > 0
    for stage in ("stage1", "stage3"):
        state = torch.load(out / after[stage]["outputs"]["checkpoint"], map_location="cpu", weights_only=False)
        assert any(k.startswith("geometry.") for k in state["state_dict"])
    views = read_pseudo_views(out / after["stage2"]["outputs"]["pseudo_views"])  # decodes every image
    assert len(views) >= 2 and views.images.shape[0] == len(views) and views.images.std() > 0
    # captioned with the subject, not the scene prompt (multi-view DreamBooth learns the subject)
    assert all(c.startswith("a sks dog, ") and c.endswith(" view") for c in views.captions)
    with Image.open(out / after["stage2"]["outputs"]["contact_sheet"]) as sheet:
        sheet.load()


def test_smoke_output_is_small_and_keeps_the_checkpoints_later_steps_load(smoke):
    out = smoke["out"]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and not p.is_symlink())
    assert size < 100e6, f"{size / 1e6:.0f} MB"  # was 583 MB: four 151 MB Lightning checkpoints
    for stage in ("stage1", "stage3"):
        assert [p.name for p in (out / stage / "run" / "ckpts").iterdir()] == ["last.ckpt"], stage
    assert f"NeRF checkpoints: {out / 'stage1' / 'run' / 'ckpts' / 'last.ckpt'}" in smoke["stdout"]
    assert smoke["stdout"].startswith("dreambooth3d run: checking")
    assert "(not run yet)" not in smoke["stdout"]


def test_turntable_videos_have_frames(smoke):
    import imageio.v3 as iio

    out, after = smoke["out"], smoke["after"]
    for stage in ("stage1", "stage3"):
        frames = iio.imread(out / after[stage]["outputs"]["turntable"], index=None)
        assert frames.ndim == 4 and frames.shape[0] >= 2 and frames.shape[-1] == 3, stage


def test_mesh_loads_with_faces_uvs_and_texture(smoke):
    import trimesh
    from PIL import Image

    mesh_dir = smoke["out"] / "results" / "mesh"
    names = {p.name for p in mesh_dir.iterdir()}
    assert {"model.obj", "model.mtl", "model.glb"} <= names
    for path in (mesh_dir / "model.obj", mesh_dir / "model.glb"):
        mesh = trimesh.load(path, force="mesh")
        assert len(mesh.faces) > 0 and mesh.visual.uv is not None and len(mesh.visual.uv) == len(mesh.vertices), path
    texture = re.search(r"map_Kd (\S+)", (mesh_dir / "model.mtl").read_text()).group(1)
    with Image.open(mesh_dir / texture) as im:
        assert im.size == (64, 64)  # the smoke preset's texture_size


def test_summary_shows_results_and_commands(smoke):
    out, after = smoke["out"], smoke["after"]
    page = (out / "summary.html").read_text()
    links = re.findall(r"(?:src|href)='([^']+)'", page)
    assert all((out / link).exists() for link in links)
    assert any(link.endswith(".mp4") for link in links) and any(link.endswith("model.glb") for link in links)
    md = (out / "SUMMARY.md").read_text()
    assert after["stage3"]["commands"][0] in md and after["finetune"]["commands"][0] in md
