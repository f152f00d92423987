"""``run --rounds K`` (DreamCraft3D's bootstrapping on this pipeline): each round's stage 2
renders the previous round's final NeRF, its multi-view finetune continues the previous
round's checkpoint, its stage 3 starts from the previous stage 3; every round is its own
manifest steps and folders (resumable), and the summary shows every round."""
from __future__ import annotations

from pathlib import Path

import pytest

from threestudio_dreambooth3d.errors import ConfigError
from threestudio_dreambooth3d.pipeline.runner import Runner
from threestudio_dreambooth3d.pipeline.steps import get_step, step_name, steps_for

from fakes import PROMPT, FakeExecutor, dotlist_of, run_cli

ROUND_2 = ["stage2_r2", "multiview_finetune_r2", "stage3_r2"]


def test_rounds_repeat_stage2_multiview_and_stage3_then_export_the_last():
    names = [s.name for s in steps_for("dreambooth3d", 2)]
    assert names == ["finetune", "stage1", "stage2", "multiview_finetune", "stage3", *ROUND_2, "export", "summary"]
    assert [s.name for s in steps_for("dreambooth3d", 1)] == [n for n in names if n not in ROUND_2]
    assert step_name("stage3_r2") == "stage3_r2" and step_name("multiview_r3") == "multiview_finetune_r3"
    with pytest.raises(ConfigError, match="unknown step 'stage1_r2'"):
        step_name("stage1_r2")  # stage 1 is not repeated


def test_each_round_builds_on_the_previous_rounds_results(make_ctx):
    ctx = make_ctx(rounds=2)
    s2, mv, s3 = (dotlist_of(get_step(n).command(ctx)) if n != "multiview_finetune_r2" else get_step(n).command(ctx)
                  for n in ROUND_2)
    assert ctx.final_nerf_step == "stage3_r2"
    # stage 2 of round 2 renders round 1's final NeRF, still translated by the fully trained model
    assert Path(s2.resume) == ctx.last_ckpt("stage3") and Path(s2.system.guidance.checkpoint) == ctx.checkpoint("full")
    assert Path(s2.system.pseudo_views_dir) == ctx.out / "pseudo_views_r2"
    assert (Path(s2.exp_root_dir) / s2.name / s2.tag) == ctx.out / "stage2_r2" / "run"
    # the multi-view finetune continues round 1's multi-view model on round 2's pseudo views
    argv = mv.argv
    assert Path(argv[argv.index("--init-checkpoint") + 1]) == ctx.checkpoint("multiview", 1)
    assert Path(argv[argv.index("--extra-images") + 1]) == ctx.out / "pseudo_views_r2" / "images"
    assert Path(argv[argv.index("--out") + 1]) == ctx.out / "multiview_finetune_r2"
    # stage 3 of round 2 starts from round 1's stage 3, guided by round 2's model and views
    assert Path(s3.system.weights) == ctx.last_ckpt("stage3")
    assert Path(s3.system.guidance.checkpoint) == ctx.checkpoint("multiview", 2)
    assert Path(s3.data.pseudo_views_dir) == ctx.out / "pseudo_views_r2"
    # the smoke preset's stage-3 overrides reach every round's stage 3; --set stage3_r2 only round 2
    ctx = make_ctx(rounds=2, overrides={"stage3": ["system.loss.lambda_rec=7"], "stage3_r2": ["trainer.max_steps=9"]})
    r1, r2 = dotlist_of(get_step("stage3").command(ctx)), dotlist_of(get_step("stage3_r2").command(ctx))
    assert r1.system.loss.lambda_rec == 7 == r2.system.loss.lambda_rec
    assert r2.trainer.max_steps == 9 != r1.trainer.max_steps
    export = dotlist_of(get_step("export").command(ctx))
    assert export.resume is not None


def test_a_two_round_run_is_resumable_per_round_and_summarises_every_round(make_ctx):
    ctx = make_ctx(rounds=2)
    steps = steps_for("dreambooth3d", 2)
    # interrupted in round 2's stage 3: the rerun resumes there, round 1 and stage2_r2 are kept
    broken = FakeExecutor(interrupt_on="stage3_r2")
    with pytest.raises(KeyboardInterrupt):
        Runner(ctx, steps=steps, executor=broken).run()
    assert broken.calls == ["finetune", "stage1", "stage2", "multiview_finetune", "stage3", *ROUND_2]
    fake = FakeExecutor()
    m = Runner(ctx, steps=steps, executor=fake).run()
    assert fake.calls == ["stage3_r2", "export"]
    assert all(r.status == "done" for r in m.steps.values())
    export = next(c for c in m.steps["export"].commands)
    assert str(ctx.last_ckpt("stage3_r2")) in export
    page = (ctx.out / "summary.html").read_text()
    for rel in ("results/pseudo_views.png", "results/pseudo_views_r2.png", "results/stage3_turntable.mp4",
                "results/stage3_r2_turntable.mp4"):
        assert (ctx.out / rel).is_file() and rel in page, rel
    assert page.index("stage3_turntable.mp4") < page.index("stage3_r2_turntable.mp4")
    # nothing to redo; redoing round 1's stage 3 redoes round 2, which builds on it
    again = FakeExecutor()
    Runner(ctx, steps=steps, executor=again).run()
    assert again.calls == []
    redo = FakeExecutor()
    Runner(ctx, steps=steps, executor=redo).run(start_from="stage3")
    assert redo.calls == ["stage3", *ROUND_2, "export"]
    # --from a later round's step redoes that round only
    r2 = FakeExecutor()
    Runner(ctx, steps=steps, executor=r2).run(start_from="stage2_r2")
    assert r2.calls == [*ROUND_2, "export"]


def _argv(subject, fake_threestudio, configs, tmp_path, *extra):
    return ["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", PROMPT, "--model", "/models/tiny-sd",
            "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio), "--configs", str(configs),
            "--preset", "smoke", *extra]


def test_dry_run_of_two_rounds_shows_stage2_twice(subject, fake_threestudio, configs, tmp_path, capsys):
    assert run_cli(_argv(subject, fake_threestudio, configs, tmp_path, "--rounds", "2", "--dry-run")) == 0
    lines = capsys.readouterr().out.splitlines()
    stage2 = [line for line in lines if line.startswith("stage2")]
    assert [line.split(":")[0] for line in stage2] == ["stage2", "stage2_r2"]
    r2 = lines[lines.index(stage2[1]) + 1]
    assert "resume=" + str((tmp_path / "out" / "stage3" / "run" / "ckpts" / "last.ckpt").resolve()) in r2


@pytest.mark.parametrize("extra, message", [
    (["--rounds", "0"], "--rounds must be a whole number >= 1"),
    (["--rounds", "2", "--set", "stage3_r3:trainer.max_steps=1"], "'stage3_r3' is not part of this run"),
    (["--rounds", "2", "--method", "latentnerf"], "--method latentnerf has none"),
])
def test_bad_rounds_are_refused_before_any_work(extra, message, subject, fake_threestudio, configs, tmp_path, capsys):
    assert run_cli(_argv(subject, fake_threestudio, configs, tmp_path, *extra, "--dry-run")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()
