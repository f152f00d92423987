"""``dreambooth3d run`` orchestration without threestudio: manifest, skip/redo decisions,
input-change propagation, --from, the command lines built for launch.py, and errors.

A fake executor stands in for the subprocesses: it reads the real command lines the
pipeline built and writes what ``dreambooth3d finetune`` / threestudio's launch.py would
write at the places those commands name, so the tests also check that the pipeline
looks for outputs where its own commands put them.
"""
from __future__ import annotations

import errno
import json
import shlex
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from threestudio_dreambooth3d.pipeline import commands, manifest as mf
from threestudio_dreambooth3d.pipeline.context import RunContext
from threestudio_dreambooth3d.pipeline.presets import get_preset
from threestudio_dreambooth3d.pipeline.runner import Runner, StepFailedError, execute
from threestudio_dreambooth3d.pipeline.steps import STEP_NAMES, get_step
from threestudio_dreambooth3d.core.subject import sha256_files

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


def _png(path: Path, color=(200, 40, 40), size=16) -> None:
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
        if cmd.log_name in ("finetune", "multiview_finetune"):
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
            _png(export / "texture_kd.jpg")

    def _finetune(self, argv):
        from threestudio_dreambooth3d.cli import build_parser

        args = build_parser().parse_args(argv[3:])  # the real `dreambooth3d finetune` parser
        assert Path(args.subject).is_dir()
        for name in args.checkpoints:
            ckpt = Path(args.out) / "checkpoints" / name
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "dreambooth.json").write_text(json.dumps({"name": name, "steps": args.steps}))


@pytest.fixture
def fake_threestudio(tmp_path) -> Path:
    root = tmp_path / "threestudio"
    (root / "threestudio").mkdir(parents=True)
    (root / "threestudio" / "__init__.py").write_text("")
    (root / "launch.py").write_text("")
    (root / "load").mkdir()
    return root


@pytest.fixture
def subject(tmp_path, subject_dir) -> Path:
    import shutil

    return Path(shutil.copytree(subject_dir, tmp_path / "subject"))


@pytest.fixture
def configs(tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(REPO / "configs", tmp_path / "configs"))


@pytest.fixture
def make_ctx(tmp_path, subject, fake_threestudio, configs):
    def make(preset="smoke", **kw):
        opts = dict(out=tmp_path / "out", subject=subject, class_noun="dog", prompt=PROMPT,
                    preset=get_preset(preset), model="/models/tiny-sd", threestudio_root=fake_threestudio,
                    configs_dir=configs)
        opts.update(kw)
        return RunContext(**opts)

    return make


def _ran(runner_or_exec) -> list:
    return list(runner_or_exec.calls)


# -- manifest -------------------------------------------------------------------------------

def test_manifest_round_trip_and_atomic_write(tmp_path):
    m = mf.Manifest(tmp_path)
    m.start("stage1", {"command": ["a"], "upstream": {}})
    assert json.loads((tmp_path / "manifest.json").read_text())["steps"]["stage1"]["status"] == "running"
    m.finish("stage1", {"checkpoint": "stage1/run/ckpts/last.ckpt"}, ["cd x && python launch.py"], 1.5)
    again = mf.Manifest(tmp_path)
    rec = again.get("stage1")
    assert rec.status == "done" and rec.outputs == {"checkpoint": "stage1/run/ckpts/last.ckpt"}
    assert rec.fingerprint == mf.fingerprint({"command": ["a"], "upstream": {}}) and rec.output_id
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary files left


def test_unreadable_manifest_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text("{ truncated")
    with pytest.raises(ValueError, match="manifest.json is not a readable manifest"):
        mf.Manifest(tmp_path)


def test_disk_full_while_saving_the_manifest_is_reported(tmp_path, monkeypatch):
    m = mf.Manifest(tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    from threestudio_dreambooth3d import fs

    monkeypatch.setattr(fs.os, "replace", full)  # the manifest saves through fs's one atomic write
    with pytest.raises(mf.DiskFullError, match="No space left on the disk while writing .*manifest.json"):
        m.start("finetune", {})
    assert not list(tmp_path.glob(".manifest.json.tmp*"))


def test_subject_hash_sees_bytes_and_names(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"1")
    b.write_bytes(b"1")
    assert sha256_files([a]) != sha256_files([b])  # renamed photo
    before = sha256_files([a])
    a.write_bytes(b"2")
    assert sha256_files([a]) != before


# -- a whole run, then reruns -----------------------------------------------------------------

def test_fresh_run_runs_every_step_and_records_its_outputs(make_ctx, capsys):
    ctx = make_ctx()
    fake = FakeExecutor()
    m = Runner(ctx, executor=fake).run()
    assert fake.calls == ["finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export"]
    assert list(m.steps) == STEP_NAMES and all(r.status == "done" for r in m.steps.values())
    for rec in m.steps.values():
        assert rec.outputs and all((ctx.out / p).exists() for p in rec.outputs.values()), rec.name
    # the newest threestudio test video is the one copied
    assert (ctx.results_dir / "stage3_turntable.mp4").read_bytes() == b"video-stage3"
    import trimesh

    glb = trimesh.load(ctx.mesh_dir / "model.glb", force="mesh")
    assert len(glb.faces) == 2 and glb.visual.uv.shape == (4, 2)
    from PIL import Image

    with Image.open(ctx.results_dir / "pseudo_views.png") as sheet:
        assert sheet.width >= 2 * 64
    out = capsys.readouterr().out
    assert "[2/7] stage1: stage 1" in out and "[2/7] stage1: done in" in out


def test_summary_links_only_existing_files_and_shows_the_commands(make_ctx):
    import re

    ctx = make_ctx()
    m = Runner(ctx, executor=FakeExecutor()).run()
    page = (ctx.out / "summary.html").read_text()
    links = re.findall(r"(?:src|href)='([^']+)'", page)
    assert any(l.endswith("stage1_turntable.mp4") for l in links) and any(l.endswith("model.glb") for l in links)
    assert all((ctx.out / l).exists() for l in links), links
    md = (ctx.out / "SUMMARY.md").read_text()
    for name in ("finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export"):
        for cmd in m.get(name).commands:
            assert cmd in md
    assert "launch.py" in m.get("stage1").commands[0]


def test_rerun_skips_every_finished_step(make_ctx, capsys):
    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    fake = FakeExecutor()
    Runner(ctx, executor=fake).run()
    assert fake.calls == []
    assert capsys.readouterr().out.count("skipped (done, inputs unchanged)") == 7


def test_moved_output_folder_is_not_a_change(make_ctx, tmp_path):
    import shutil

    ctx = make_ctx(model=str(tmp_path / "out" / "models" / "tiny-sd"))  # the smoke model lives in OUT
    Runner(ctx, executor=FakeExecutor()).run()
    moved = tmp_path / "elsewhere"
    shutil.move(str(ctx.out), moved)
    plan = Runner(make_ctx(out=moved, model=str(moved / "models" / "tiny-sd")), executor=FakeExecutor()).plan()
    assert [d.reason for d in plan] == ["done, inputs unchanged"] * 7


def test_changed_subject_photo_reruns_the_finetune_and_everything_after(make_ctx, subject):
    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    _png(next(subject.glob("*.png")), (0, 0, 255), size=64)
    runner = Runner(ctx, executor=FakeExecutor())
    plan = runner.plan()
    assert plan[0].run and plan[0].reason == "inputs changed: subject photos"
    assert all(d.run for d in plan[1:])
    runner.run()
    assert runner.executor.calls[0] == "finetune" and len(runner.executor.calls) == 6


def test_changed_prompt_keeps_the_finetune(make_ctx):
    Runner(make_ctx(), executor=FakeExecutor()).run()
    fake = FakeExecutor()
    Runner(make_ctx(prompt="a sks dog in a red box"), executor=fake).run()
    assert fake.calls == ["stage1", "stage2", "multiview_finetune", "stage3", "export"]


def test_edited_stage3_config_reruns_stage3_onwards(make_ctx, configs):
    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    cfg = configs / ctx.preset.configs["stage3"]
    cfg.write_text(cfg.read_text() + "\n# tuned\n")
    runner = Runner(ctx, executor=FakeExecutor())
    assert [d.step.name for d in runner.plan() if d.run] == ["stage3", "export", "summary"]
    assert runner.plan()[4].reason == "inputs changed: config_sha256"


def test_upstream_redone_in_an_earlier_run_still_propagates(make_ctx):
    """stage1 redone by a run that stopped right after it: the next run must redo what consumes it."""
    from threestudio_dreambooth3d.pipeline.steps import STEPS

    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    Runner(ctx, steps=STEPS[:2], executor=FakeExecutor()).run(start_from="stage1")
    m = mf.Manifest(ctx.out)
    assert m.get("stage2").status == "done"  # untouched, but built on the old stage 1
    runner = Runner(ctx, executor=FakeExecutor())
    assert runner.plan()[2].reason == "inputs changed: upstream stage1"
    runner.run()
    assert runner.executor.calls == ["stage2", "multiview_finetune", "stage3", "export"]


def test_failed_step_is_recorded_and_retried(make_ctx):
    ctx = make_ctx()
    with pytest.raises(StepFailedError):
        Runner(ctx, executor=FakeExecutor(fail_on="stage2")).run()
    rec = mf.Manifest(ctx.out).get("stage2")
    assert rec.status == "failed" and "exit code 1" in rec.error and "launch.py" in rec.commands[0]
    fake = FakeExecutor()
    Runner(ctx, executor=fake).run()
    assert fake.calls == ["stage2", "multiview_finetune", "stage3", "export"]


def test_interrupted_stage_restarts_cleanly_and_keeps_earlier_stages(make_ctx):
    ctx = make_ctx()
    with pytest.raises(KeyboardInterrupt):
        Runner(ctx, executor=FakeExecutor(interrupt_on="stage2")).run()
    assert mf.Manifest(ctx.out).get("stage2").status == "running"
    assert (ctx.trial_dir("stage2") / "ckpts" / "half-written.ckpt").exists()
    fake = FakeExecutor()
    runner = Runner(ctx, executor=fake)
    assert runner.plan()[2].reason == "interrupted last time; restarting cleanly"
    runner.run()
    assert fake.calls == ["stage2", "multiview_finetune", "stage3", "export"]  # stage 1 not recomputed
    assert fake.seen_before_run["stage2"] == []  # the half-written trial was removed first


def test_interrupted_finetune_resumes_its_own_state(make_ctx):
    ctx = make_ctx()
    runner = Runner(ctx, executor=FakeExecutor())
    runner.manifest.start("finetune", runner.inputs(runner.steps[0]))
    state = ctx.finetune_dir / "state" / "latest.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"trainer state")
    d = Runner(ctx, executor=FakeExecutor()).plan()[0]
    assert d.run and d.resume and d.reason == "interrupted last time; resuming"
    Runner(ctx, executor=FakeExecutor()).run()
    assert state.exists()  # not wiped: the trainer continues from it


def test_interrupted_finetune_with_changed_inputs_restarts_cleanly(make_ctx):
    # resuming needs the same inputs: a state saved for other settings is wiped, not continued
    ctx = make_ctx()
    runner = Runner(ctx, executor=FakeExecutor())
    runner.manifest.start("finetune", runner.inputs(runner.steps[0]))
    state = ctx.finetune_dir / "state" / "latest.pt"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"trainer state of the old settings")
    changed = make_ctx(seed=7)  # another seed: another finetune command
    d = Runner(changed, executor=FakeExecutor()).plan()[0]
    assert d.run and not d.resume and d.reason == "interrupted last time; restarting cleanly"
    seen = {}

    class Recording(FakeExecutor):
        def __call__(self, cmd, log_path):
            if cmd.log_name == "finetune":
                seen["state"] = state.exists()
            return super().__call__(cmd, log_path)

    Runner(changed, executor=Recording()).run()
    assert seen["state"] is False  # removed before the finetune ran again
    assert mf.Manifest(ctx.out).get("finetune").status == "done"


def test_from_forces_that_step_and_later_ones(make_ctx):
    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    fake = FakeExecutor()
    Runner(ctx, executor=fake).run(start_from="multiview")
    assert fake.calls == ["multiview_finetune", "stage3", "export"]
    with pytest.raises(ValueError, match="unknown step 'stage9'"):
        Runner(ctx, executor=FakeExecutor()).plan("stage9")


def test_deleted_output_is_recomputed(make_ctx):
    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    (ctx.mesh_dir / "model.glb").unlink()
    runner = Runner(ctx, executor=FakeExecutor())
    assert runner.plan()[5].reason == "output missing: results/mesh/model.glb"
    runner.run()
    assert runner.executor.calls == ["export"]


# -- command lines ------------------------------------------------------------------------------

def _dotlist(cmd):
    argv = cmd.argv[cmd.argv.index("--config"):]
    return OmegaConf.from_cli([a for a in argv if "=" in a and not a.startswith("--")])


def test_launch_commands_for_each_stage(make_ctx, fake_threestudio, monkeypatch):
    monkeypatch.setattr(commands, "missing_cuda_pieces", lambda: [])  # a GPU machine with tinycudann/nvdiffrast
    ctx = make_ctx(preset="default", prompt="a sks dog: sitting, 3 hats")
    modes = {}
    for step in ("stage1", "stage2", "stage3", "export"):
        cmd = get_step(step, ctx.method).command(ctx)
        assert cmd.argv[1] == str(fake_threestudio / "launch.py") and cmd.cwd == ctx.workspace
        assert cmd.argv[cmd.argv.index("--gpu") + 1] == "0"
        d = _dotlist(cmd)
        # trial folder at a known place
        assert (Path(d.exp_root_dir) / d.name / d.tag) == ctx.trial_dir(step) and d.use_timestamp is False
        modes[step] = next(a for a in cmd.argv if a in ("--train", "--test", "--export"))
        if step != "export":
            # the prompt reads back as itself despite ': ' and ','
            assert d.system.prompt_processor.prompt == "a sks dog: sitting, 3 hats"
            assert d.system.guidance.pretrained_model_name_or_path == "/models/tiny-sd"
            assert Path(cmd.argv[cmd.argv.index("--config") + 1]) == ctx.configs_dir / f"dreambooth3d-{step}.yaml"
    assert modes == {"stage1": "--train", "stage2": "--test", "stage3": "--train", "export": "--export"}
    s1, s2, s3, ex = (_dotlist(get_step(s, ctx.method).command(ctx)) for s in ("stage1", "stage2", "stage3", "export"))
    assert Path(s1.system.guidance.checkpoint) == ctx.checkpoint("partial")
    assert Path(s2.system.guidance.checkpoint) == ctx.checkpoint("full")
    assert Path(s2.resume) == ctx.last_ckpt("stage1") and Path(s2.system.pseudo_views_dir) == ctx.pseudo_views_dir
    # pseudo views are captioned with the subject, not the scene prompt: "a sks dog, back view"
    assert s2.system.translation_prompt == f"a {ctx.identifier} {ctx.class_noun}" != ctx.prompt
    assert Path(s3.system.guidance.checkpoint) == ctx.multiview_dir / "checkpoints" / "multiview"
    assert Path(s3.data.pseudo_views_dir) == ctx.pseudo_views_dir and Path(s3.system.weights) == ctx.last_ckpt("stage1")
    assert Path(ex.resume) == ctx.last_ckpt("stage3") and ex.system.exporter_type == "mesh-exporter"
    export = get_step("export", ctx.method).command(ctx)
    assert Path(export.argv[export.argv.index("--config") + 1]) == ctx.parsed_config("stage3")


def test_smoke_runs_launch_py_through_the_cpu_wrapper_with_the_real_configs(make_ctx, fake_threestudio):
    ctx = make_ctx(overrides={"stage1": ["system.guidance.guidance_scale=50", "data.width=48"]})
    cmd = get_step("stage1", ctx.method).command(ctx)
    assert cmd.argv[:3] == [ctx.python, "-m", "threestudio_dreambooth3d.cpu.compat"]
    assert cmd.argv[3:6] == ["--threestudio-root", str(fake_threestudio), str(fake_threestudio / "launch.py")]
    assert cmd.argv[cmd.argv.index("--config") + 1].endswith("configs/dreambooth3d-stage1.yaml")
    dotlist = _dotlist(cmd)
    assert dotlist.system.guidance.guidance_scale == 50  # user override, last so it wins
    assert dotlist.data.width == 48 and dotlist.data.height == 32  # ... over the CPU override set
    assert dotlist.trainer.max_steps == 2
    assert cmd.env["PYTHONPATH"].split(":")[0] == str(fake_threestudio)
    assert shlex.split(cmd.shell().split(" && ", 1)[1])[len(cmd.env):] == cmd.argv  # pasteable, env first


def test_finetune_commands_parse_with_the_finetune_cli(make_ctx):
    from threestudio_dreambooth3d.cli import build_parser

    ctx = make_ctx(preset="default")
    first = build_parser().parse_args(get_step("finetune").command(ctx).argv[3:])
    assert first.checkpoints == {"partial": 200, "full": 800} and first.steps == 800
    assert first.num_class_images == 200 and Path(first.out) == ctx.finetune_dir
    mv = build_parser().parse_args(get_step("multiview_finetune").command(ctx).argv[3:])
    assert Path(mv.init_checkpoint) == ctx.checkpoint("partial")  # the paper: the partial model continues
    assert mv.mode == "lora" and not mv.train_text_encoder
    assert Path(mv.extra_images) == ctx.pseudo_views_dir / "images" and mv.checkpoints == {"multiview": 400}
    assert mv.class_images_dir == first.class_images_dir  # class images generated once
    smoke = build_parser().parse_args(get_step("finetune").command(make_ctx()).argv[3:])
    assert smoke.device == "cpu" and smoke.steps == 4


def test_multiview_finetune_continues_the_chosen_checkpoint_with_the_first_runs_choices(make_ctx):
    from threestudio_dreambooth3d.cli import build_parser

    def multiview(ctx):
        return build_parser().parse_args(get_step("multiview_finetune").command(ctx).argv[3:])

    ctx = make_ctx(overrides={"finetune": ["--mode=full", "--train-text-encoder"]})
    mv = multiview(ctx)
    assert Path(mv.init_checkpoint) == ctx.checkpoint("partial")
    assert mv.mode == "full" and mv.train_text_encoder  # what the first run trained, it keeps training
    assert Path(multiview(make_ctx(multiview_init="full")).init_checkpoint) == ctx.checkpoint("full")
    # its own options still win
    assert multiview(make_ctx(overrides={"finetune": ["--mode=full"], "multiview_finetune": ["--mode=lora"]})).mode == "lora"
    with pytest.raises(ValueError, match="multiview_init must be one of partial, full"):
        make_ctx(multiview_init="early")


def test_dry_run_shows_the_multiview_finetune_starting_from_partial(fake_threestudio, configs, subject, tmp_path, capsys):
    argv = ["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", PROMPT, "--model", "/models/tiny-sd",
            "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio), "--configs", str(configs),
            "--dry-run", "--preset", "smoke"]
    assert _cli(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    mv = lines[[i for i, line in enumerate(lines) if line.startswith("multiview_finetune:")][0] + 1]
    assert "--init-checkpoint " + str((tmp_path / "out" / "finetune" / "checkpoints" / "partial").resolve()) in mv
    assert _cli(argv + ["--multiview-init", "full"]) == 0
    assert "checkpoints/full --extra-images" in capsys.readouterr().out


def test_workspace_links_our_extension_and_threestudio_assets(make_ctx, fake_threestudio):
    ctx = make_ctx()
    ws = commands.prepare_workspace(ctx)
    ext = ws / "custom" / "threestudio-dreambooth3d"
    assert (ext / "__init__.py").is_file() and (ext / "pipeline" / "runner.py").is_file()
    assert (ws / "load").resolve() == fake_threestudio / "load"
    assert commands.prepare_workspace(ctx) == ws  # idempotent


# -- errors -------------------------------------------------------------------------------------

def test_threestudio_not_found_says_how_to_point_at_it(tmp_path, monkeypatch):
    monkeypatch.delenv("THREESTUDIO_ROOT", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(commands.ThreestudioNotFoundError, match="threestudio not found.*--threestudio PATH.*THREESTUDIO_ROOT"):
        commands.locate_threestudio()
    with pytest.raises(commands.ThreestudioNotFoundError, match=r"--threestudio=.* is not a threestudio checkout"):
        commands.locate_threestudio(tmp_path)
    monkeypatch.setenv("THREESTUDIO_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(commands.ThreestudioNotFoundError, match="THREESTUDIO_ROOT=.*nowhere is not"):
        commands.locate_threestudio()


def test_export_of_a_latentnerf_reads_its_texture_through_the_latent_to_rgb_material(make_ctx):
    from threestudio_dreambooth3d.pipeline.steps import steps_for

    ctx = make_ctx(method="latentnerf")
    export = [s for s in steps_for("latentnerf") if s.name == "export"][0]
    dotlist = export.dotlist(ctx)
    ckpt = str(ctx.last_ckpt("baseline"))
    assert "system.material_type=latent-rgb-material" in dotlist and f"system.weights={ckpt}" in dotlist
    assert not any(d.startswith("resume=") for d in dotlist)  # strict resume would miss the adapter's weights
    plain = [s for s in steps_for("dreamboothfusion") if s.name == "export"][0].dotlist(make_ctx(method="dreamboothfusion"))
    assert not any("material_type" in d for d in plain) and any(d.startswith("resume=") for d in plain)


def test_failed_command_reports_its_last_lines_and_log(tmp_path):
    cmd = commands.Command([sys.executable, "-c", "print('loading'); print('ValueError: bad config key'); raise SystemExit(3)"],
                           cwd=tmp_path, log_name="stage1")
    with pytest.raises(StepFailedError) as e:
        execute(cmd, tmp_path / "logs" / "stage1.log")
    assert "stage1 failed (exit code 3)" in str(e.value) and "ValueError: bad config key" in str(e.value)
    assert "stage1.log" in str(e.value)
    assert "bad config key" in (tmp_path / "logs" / "stage1.log").read_text()


def test_disk_full_in_a_command_is_named_as_such(tmp_path):
    cmd = commands.Command([sys.executable, "-c", "raise OSError(28, 'No space left on device')"], cwd=tmp_path,
                           log_name="stage3")
    with pytest.raises(mf.DiskFullError, match="No space left on the disk while running stage3"):
        execute(cmd, tmp_path / "stage3.log")


def _cli(argv):
    from threestudio_dreambooth3d.cli import main

    return main(argv)


def test_cli_prompt_without_identifier_warns_and_explains(make_ctx, fake_threestudio, configs, subject, tmp_path, capsys):
    code = _cli(["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", "a dog wearing a hat",
                 "--model", "/models/tiny-sd", "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio),
                 "--configs", str(configs), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0
    assert "does not contain the identifier 'sks'" in captured.err and "a sks dog wearing a hat" in captured.err
    assert "finetune: run (not run yet)" in captured.out and "launch.py" in captured.out
    assert not (tmp_path / "out" / "manifest.json").exists()  # a dry run writes nothing


@pytest.mark.parametrize("problem, message", [
    ("missing", "does not exist"),
    ("empty", "has no images"),
    ("text", "notes.doc is not an image"),
    ("broken", "broken.png cannot be read as an image"),
])
def test_cli_subject_folder_problems(problem, message, tmp_path, fake_threestudio, configs, capsys):
    folder = tmp_path / "photos"
    if problem != "missing":
        folder.mkdir()
    if problem == "text":
        (folder / "notes.doc").write_text("x")
    if problem == "broken":
        (folder / "broken.png").write_bytes(b"not a png")
    code = _cli(["run", "--subject", str(folder), "--class-noun", "dog", "--prompt", PROMPT, "--model", "m",
                 "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio), "--configs", str(configs)])
    assert code == 2 and message in capsys.readouterr().err


def test_cli_threestudio_not_found_exits_with_the_fix(subject, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("THREESTUDIO_ROOT", raising=False)
    code = _cli(["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", PROMPT, "--model", "m",
                 "--out", str(tmp_path / "out"), "--threestudio", str(tmp_path)])
    assert code == 2 and "is not a threestudio checkout" in capsys.readouterr().err


def test_default_preset_without_gpu_points_to_smoke(fake_threestudio, tmp_path):
    from threestudio_dreambooth3d.doctor import MISSING, GpuInfo, run_checks

    rows = {r.name: r for r in run_checks("default", threestudio=str(fake_threestudio), out=tmp_path,
                                          gpu=GpuInfo(False))}
    assert rows["CUDA GPU"].status == MISSING and "--preset smoke" in rows["CUDA GPU"].fix
    rows = {r.name: r for r in run_checks("smoke", threestudio=str(fake_threestudio), out=tmp_path,
                                          gpu=GpuInfo(False))}
    assert rows["CUDA GPU"].status != MISSING


def test_set_overrides_parse_per_step():
    from threestudio_dreambooth3d.cli.run import parse_set

    assert parse_set(["stage1:trainer.max_steps=5000", "mesh:system.exporter.texture_size=2048"]) == {
        "stage1": ["trainer.max_steps=5000"], "export": ["system.exporter.texture_size=2048"]}
    with pytest.raises(ValueError, match="STEP:KEY=VALUE"):
        parse_set(["trainer.max_steps=5"])


def test_ctrl_c_prints_one_line_naming_the_step_and_exits_130(make_ctx, capsys):
    from threestudio_dreambooth3d.cli.run import run_steps

    ctx = make_ctx()
    code = run_steps(Runner(ctx, executor=FakeExecutor(interrupt_on="stage1")))
    err = capsys.readouterr().err
    assert code == 130
    assert err.strip() == "dreambooth3d run: interrupted during stage1; rerun the same command to resume"
    assert "Traceback" not in err
    assert mf.Manifest(ctx.out).get("stage1").status == mf.RUNNING  # so the rerun resumes it


def test_summary_shows_the_mesh_as_pictures_the_warnings_and_the_scores(make_ctx):
    from PIL import Image

    from threestudio_dreambooth3d.pipeline.summary import update_eval_section

    ctx = make_ctx()
    runner = Runner(ctx, executor=FakeExecutor())
    runner.manifest.set_run_info({"warnings": ["the prompt 'a dog' does not contain the identifier 'sks'"]})
    runner.run()
    page = (ctx.out / "summary.html").read_text()
    assert "<img src='results/mesh_views.png'" in page
    with Image.open(ctx.results_dir / "mesh_views.png") as views:
        assert views.size == (4 * 256, 256) and views.convert("L").getextrema()[0] < 250  # something drawn
    assert "warning: the prompt &#x27;a dog&#x27; does not contain the identifier" in page
    assert "Not evaluated yet" in page
    results = {"prompt": "a sks dog", "clip_prompt": "a dog", "views": {"count": 3, "folder": "x"},
               "clip": {"tiny-clip": {"r_precision": 0.5, "clip_t": 0.25, "clip_i": None}},
               "dino": {"tiny-dino": {"dino": 0.75}}, "warnings": ["no identifier in the prompt"]}
    assert update_eval_section(ctx.out / "summary.html", results)
    page = (ctx.out / "summary.html").read_text()
    assert "R-precision 0.5000, CLIP-T 0.2500" in page and "DINO 0.7500" in page
    assert "warning: no identifier in the prompt" in page and "Not evaluated yet" not in page
    assert "<img src='results/mesh_views.png'" in page  # the rest of the page is kept
    assert not update_eval_section(ctx.out / "nowhere.html", results)


def test_baseline_method_runs_only_its_steps_with_the_full_checkpoint(make_ctx):
    from threestudio_dreambooth3d.pipeline.steps import steps_for

    ctx = make_ctx(method="dreamboothfusion")
    fake = FakeExecutor()
    Runner(ctx, steps=steps_for(ctx.method), executor=fake).run()
    assert fake.calls == ["finetune", "baseline", "export"]  # no stages 1-3, no multi-view finetune
    base = get_step("baseline", ctx.method).command(ctx)
    assert base.argv[base.argv.index("--config") + 1] == str(ctx.configs_dir / "dreamboothfusion-baseline.yaml")
    assert "--train" in base.argv
    d = _dotlist(base)
    assert Path(d.system.guidance.checkpoint) == ctx.checkpoint("full") and d.trainer.max_steps == 2  # smoke-scaled
    ex = _dotlist(get_step("export", ctx.method).command(ctx))
    assert Path(ex.resume) == ctx.last_ckpt("baseline")
    m = mf.Manifest(ctx.out)
    assert set(m.steps) == {"finetune", "baseline", "export", "summary"}
    assert (ctx.results_dir / "baseline_turntable.mp4").is_file() and (ctx.out / "summary.html").is_file()
    fake = FakeExecutor()
    Runner(ctx, steps=steps_for(ctx.method), executor=fake).run()
    assert fake.calls == []  # a rerun skips every finished step


def test_run_method_flag_offers_the_three_methods_and_checks_their_configs(fake_threestudio, configs, subject, tmp_path,
                                                                           capsys):
    from threestudio_dreambooth3d.cli.sweep import run_methods

    assert run_methods() == ["dreambooth3d", "dreamboothfusion", "latentnerf"]
    argv = ["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", PROMPT, "--model", "/models/tiny-sd",
            "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio), "--configs", str(configs),
            "--dry-run", "--preset", "smoke", "--method", "dreamboothfusion"]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")] == [
        "finetune", "baseline", "export", "summary"]
    assert "dreamboothfusion-baseline.yaml" in out and "checkpoints/full" in out
    (configs / "latentnerf-dreambooth-baseline.yaml").unlink(missing_ok=True)
    assert _cli(argv[:-1] + ["latentnerf"]) == 2
    assert "latentnerf-dreambooth-baseline.yaml not found" in capsys.readouterr().err
