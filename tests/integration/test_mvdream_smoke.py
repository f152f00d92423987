"""``dreambooth3d run --prior mvdream --preset smoke`` end to end against the real threestudio, on the CPU,
with the tiny random MVDream: every step runs and the run ends with a textured mesh."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS = ["finetune", "mvdream_model", "mv_finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export",
         "summary"]
TIMEOUT = 2400


@pytest.fixture(scope="module")
def mv_smoke(tmp_path_factory, threestudio_root):
    out = tmp_path_factory.mktemp("mvsmoke") / "out"
    argv = [sys.executable, "-m", "threestudio_dreambooth3d.cli", "run", "--subject", str(REPO / "examples" / "red_toy"),
            "--class-noun", "toy", "--prompt", "a sks toy on a table", "--preset", "smoke", "--prior", "mvdream",
            "--out", str(out), "--threestudio", str(threestudio_root)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out


def test_every_step_ran_and_the_run_ends_with_a_textured_mesh(mv_smoke):
    steps = json.loads((mv_smoke / "manifest.json").read_text())["steps"]
    assert list(steps) == STEPS and all(s["status"] == "done" for s in steps.values())
    mesh = mv_smoke / "results" / "mesh"
    assert list(mesh.glob("*.obj")) and list(mesh.glob("*.glb"))
    assert [p for p in mesh.iterdir() if p.suffix in (".png", ".jpg")], "no texture image next to the mesh"


def test_stages_1_and_3_ran_the_multiview_guidance_on_4_view_batches(mv_smoke):
    for stage, ckpt in (("stage1", mv_smoke / "mv_finetune" / "checkpoints" / "partial"),
                        ("stage3", mv_smoke / "multiview_finetune" / "checkpoints" / "multiview")):
        cfg = yaml.safe_load((mv_smoke / stage / "run" / "configs" / "parsed.yaml").read_text())
        assert cfg["system"]["guidance_type"] == "dreambooth-mvdream-guidance"
        assert cfg["data_type"] == "dreambooth-multiview-camera-datamodule" and cfg["data"]["batch_size"] == 4
        assert Path(cfg["system"]["guidance"]["checkpoint"]) == ckpt
        assert Path(cfg["system"]["guidance"]["pretrained_model_name_or_path"]) == mv_smoke / "models" / "tiny-mvdream"
    # stage 2 (a --test run: no parsed config) translates with the 2D full DreamBooth on the tiny SD
    command = json.loads((mv_smoke / "manifest.json").read_text())["steps"]["stage2"]["inputs"]["command"]
    assert any(a.endswith("configs/dreambooth3d-stage2.yaml") for a in command)
    assert "system.guidance.pretrained_model_name_or_path=$OUT/models/tiny-sd" in command
    assert "system.guidance.checkpoint=$OUT/finetune/checkpoints/full" in command


def test_the_multiview_finetunes_trained_the_mvdream_model(mv_smoke):
    for ckpt in (mv_smoke / "mv_finetune" / "checkpoints" / "partial",
                 mv_smoke / "multiview_finetune" / "checkpoints" / "multiview"):
        meta = json.loads((ckpt / "dreambooth.json").read_text())
        assert Path(meta["base_model"]) == mv_smoke / "models" / "tiny-mvdream"
    # the continuation trained on the pseudo views as 4-view sets, not as single captioned images
    command = json.loads((mv_smoke / "manifest.json").read_text())["steps"]["multiview_finetune"]["inputs"]["command"]
    assert "--extra-views" in command and "--extra-images" not in command and "mvdream" in command
