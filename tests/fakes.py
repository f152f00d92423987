"""Shared fakes for the pipeline's and the sweep's tests.

The pipeline: a stand-in for the subprocesses a run starts.

:class:`FakeExecutor` reads the real command lines the pipeline built and writes what
``dreambooth3d finetune`` / threestudio's launch.py would write at the places those commands
name, so the tests also check that the pipeline looks for outputs where its own commands put
them. The fixtures that build a run (``fake_threestudio``, ``subject``, ``configs``,
``make_ctx``) are in conftest.py.
"""
from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from threestudio_dreambooth3d.pipeline import commands
from threestudio_dreambooth3d.pipeline.runner import StepFailedError
from threestudio_dreambooth3d.sweep.cell import write_record
from threestudio_dreambooth3d.sweep.dataset import Subject
from threestudio_dreambooth3d.sweep.plan import DONE, SweepOptions, plan_cells

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a sks dog wearing a hat"

# A quad with UVs, a material and a texture: what threestudio's mesh exporter writes.
OBJ = """mtllib model.mtl
g object
usemtl default
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1
f 1/1/ 2/2/ 3/3/
f 1/1/ 3/3/ 4/4/
"""


MTL = "newmtl default\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nmap_Kd texture_kd.jpg\n"


def write_png(path: Path, color=(200, 40, 40), size=16) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


class FakeExecutor:
    """Writes what each command would write, where its arguments say; records the calls."""

    def __init__(self, fail_on=None, interrupt_on=None):
        self.calls, self.fail_on, self.interrupt_on = [], fail_on, interrupt_on
        self.seen_before_run = {}  # step -> files already in its trial folder when the command ran

    def __call__(self, cmd: commands.Command, log_path: Path) -> None:
        self.calls.append(cmd.log_name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(cmd.shell() + "\n")
        if cmd.log_name == "finetune" or cmd.log_name.startswith("multiview_finetune"):
            return self._finetune(cmd.argv)
        argv = cmd.argv[cmd.argv.index("--config"):]
        dot = OmegaConf.from_cli([a for a in argv if "=" in a and not a.startswith("--")])
        trial = Path(dot.exp_root_dir) / dot.name / dot.tag
        self.seen_before_run[cmd.log_name] = sorted(p.name for p in trial.rglob("*")) if trial.exists() else []
        if cmd.log_name == self.interrupt_on:
            (trial / "ckpts").mkdir(parents=True, exist_ok=True)
            (trial / "ckpts" / "half-written.ckpt").write_bytes(b"x")
            raise KeyboardInterrupt
        if cmd.log_name == self.fail_on:
            raise StepFailedError(f"{cmd.log_name} failed (exit code 1)")
        save = trial / "save"
        save.mkdir(parents=True, exist_ok=True)
        if "--train" in argv:
            (trial / "ckpts").mkdir(exist_ok=True)
            (trial / "ckpts" / "last.ckpt").write_bytes(b"ckpt")
            (trial / "configs").mkdir(exist_ok=True)
            (trial / "configs" / "parsed.yaml").write_text(OmegaConf.to_yaml(dot))
            (save / "it1-test.mp4").write_bytes(b"old")
            (save / "it2-test.mp4").write_bytes(b"video-" + dot.name.encode())
        elif "--test" in argv:
            import torch

            from threestudio_dreambooth3d.core.cameras import orbit_cameras
            from threestudio_dreambooth3d.core.pseudo_views import write_pseudo_views

            prompt = dot.system.prompt_processor.prompt
            write_pseudo_views(dot.system.pseudo_views_dir, torch.rand(3, 16, 16, 3), orbit_cameras(3, height=16, width=16),
                               [f"{prompt}, {v} view" for v in ("front", "side", "back")])
        elif "--export" in argv:
            export = save / "it2-export"
            export.mkdir()
            (export / "model.obj").write_text(OBJ)
            (export / "model.mtl").write_text(MTL)
            write_png(export / "texture_kd.jpg")

    def _finetune(self, argv):
        from threestudio_dreambooth3d.cli import build_parser

        args = build_parser().parse_args(argv[3:])  # the real `dreambooth3d finetune` parser
        assert Path(args.subject).is_dir()
        for name in args.checkpoints:
            ckpt = Path(args.out) / "checkpoints" / name
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "dreambooth.json").write_text(json.dumps({"name": name, "steps": args.steps}))


def dotlist_of(cmd):
    argv = cmd.argv[cmd.argv.index("--config"):]
    return OmegaConf.from_cli([a for a in argv if "=" in a and not a.startswith("--")])


def run_cli(argv):
    from threestudio_dreambooth3d.cli import main

    return main(argv)


# -- the sweep: a dataset in google/dreambooth's layout, a plan, cells finished by hand

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


def write_dreambooth_dataset(root: Path, big: bool = False) -> Path:
    """A tiny synthetic dataset in the DreamBooth layout (never the real photos)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts_and_classes.txt").write_text(PROMPTS_AND_CLASSES)
    for i, name in enumerate(["backpack", "bear_plushie", "dog"]):
        (root / name).mkdir()
        for j in range(3):
            Image.new("RGB", (80, 64), (40 * i, 60 * j, 100)).save(root / name / f"0{j}.jpg")
    return root


def sweep_subjects(tmp_path):
    return [Subject("dog", tmp_path / "dog", "dog", True), Subject("bear", tmp_path / "bear", "stuffed animal")]


def plan_sweep(tmp_path, subjects=None, methods=("dreambooth3d", "latentnerf"), prompts=None, **kw):
    subjects = subjects or sweep_subjects(tmp_path)
    prompts = prompts or {s.name: ["a {identifier} {class}", "a {identifier} {class} in the snow"] for s in subjects}
    opts = SweepOptions(out=tmp_path / "sweep", preset="smoke", **kw)
    return plan_cells(opts, subjects, prompts, list(methods), {s.name: "abc" for s in subjects})


def fake_eval(cell, r_prec: float = 0.5, janus: float = 0.25) -> dict:
    return {"clip": {m: {"r_precision": r_prec, "clip_t": 0.2, "clip_i": 0.7, "janus": {"janus": janus}}
                     for m in CLIP_MODELS},
            "dino": {DINO: {"dino": 0.4}}, "views": {"files": []}}


def finish_cell(cell, gpu=None, data=None):
    cell.eval_json.parent.mkdir(parents=True, exist_ok=True)
    cell.eval_json.write_text(json.dumps(data or fake_eval(cell)))
    return write_record(cell, {"key": cell.key, "status": DONE, "fingerprint": cell.fingerprint, "gpu": gpu,
                               "elapsed_s": 1.0, "log": str(cell.log_path)})
