"""``dreambooth3d run`` orchestration without threestudio: skip/redo decisions, input-change
propagation, --from, interruptions, failed commands (the executor is :class:`fakes.FakeExecutor`)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from threestudio_dreambooth3d.errors import DiskFullError
from threestudio_dreambooth3d.pipeline import commands, manifest as mf
from threestudio_dreambooth3d.pipeline.runner import Runner, StepFailedError, execute
from threestudio_dreambooth3d.pipeline.steps import STEP_NAMES, get_step

from fakes import FakeExecutor, dotlist_of, write_png


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
    write_png(next(subject.glob("*.png")), (0, 0, 255), size=64)
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
    with pytest.raises(DiskFullError, match="No space left on the disk while running stage3"):
        execute(cmd, tmp_path / "stage3.log")


def test_baseline_method_runs_only_its_steps_with_the_full_checkpoint(make_ctx):
    from threestudio_dreambooth3d.pipeline.steps import steps_for

    ctx = make_ctx(method="dreamboothfusion")
    fake = FakeExecutor()
    Runner(ctx, steps=steps_for(ctx.method), executor=fake).run()
    assert fake.calls == ["finetune", "baseline", "export"]  # no stages 1-3, no multi-view finetune
    base = get_step("baseline", ctx.method).command(ctx)
    assert base.argv[base.argv.index("--config") + 1] == str(ctx.configs_dir / "dreamboothfusion-baseline.yaml")
    assert "--train" in base.argv
    d = dotlist_of(base)
    assert Path(d.system.guidance.checkpoint) == ctx.checkpoint("full") and d.trainer.max_steps == 2  # smoke-scaled
    ex = dotlist_of(get_step("export", ctx.method).command(ctx))
    assert Path(ex.resume) == ctx.last_ckpt("baseline")
    m = mf.Manifest(ctx.out)
    assert set(m.steps) == {"finetune", "baseline", "export", "summary"}
    assert (ctx.results_dir / "baseline_turntable.mp4").is_file() and (ctx.out / "summary.html").is_file()
    fake = FakeExecutor()
    Runner(ctx, steps=steps_for(ctx.method), executor=fake).run()
    assert fake.calls == []  # a rerun skips every finished step


# -- damaged outputs and forced redos (issue 20, item 3) ----------------------------------------

@pytest.mark.parametrize("victim, step", [("finetune/checkpoints/partial/dreambooth.json", "finetune"),
                                          ("stage3/run/ckpts/last.ckpt", "stage3")])
def test_a_damaged_output_redoes_its_step_and_what_follows(make_ctx, victim, step):
    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    path = ctx.out / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    plan = Runner(ctx, executor=FakeExecutor()).plan()
    first = next(d for d in plan if d.run)
    assert first.step.name == step and first.reason.startswith("output damaged: ")
    assert all(d.run for d in plan[plan.index(first):])
    fake = FakeExecutor()
    Runner(ctx, executor=fake).run()
    assert fake.calls[0] == step
    assert [d.reason for d in Runner(ctx, executor=FakeExecutor()).plan()] == ["done, inputs unchanged"] * 7


def test_a_failed_forced_redo_puts_the_previous_results_back(make_ctx):
    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    mesh = {p.name: p.read_bytes() for p in ctx.mesh_dir.iterdir()}
    record = mf.Manifest(ctx.out).get("export")
    with pytest.raises(StepFailedError):
        Runner(ctx, executor=FakeExecutor(fail_on="export")).run(start_from="export")
    assert {p.name: p.read_bytes() for p in ctx.mesh_dir.iterdir()} == mesh
    again = mf.Manifest(ctx.out).get("export")
    assert again.status == "done" and again.output_id == record.output_id
    assert not (ctx.out / ".previous").exists()
    assert [d.reason for d in Runner(ctx, executor=FakeExecutor()).plan()] == ["done, inputs unchanged"] * 7


def test_a_successful_redo_leaves_nothing_aside(make_ctx):
    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    Runner(ctx, executor=FakeExecutor()).run(start_from="stage3")
    assert not (ctx.out / ".previous").exists()
    assert [d.reason for d in Runner(ctx, executor=FakeExecutor()).plan()] == ["done, inputs unchanged"] * 7


def test_eval_editing_the_summary_page_is_not_damage(make_ctx):
    ctx = make_ctx()
    Runner(ctx, executor=FakeExecutor()).run()
    page = ctx.out / "summary.html"
    page.write_text(page.read_text() + "<!-- scores added by dreambooth3d eval -->")
    assert [d.reason for d in Runner(ctx, executor=FakeExecutor()).plan()] == ["done, inputs unchanged"] * 7
