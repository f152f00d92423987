"""run --prior mvdream: the steps, their commands read back, the MVDream model's source, the
pseudo views as 4-view sets, and doctor's MVDream rows."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from threestudio_dreambooth3d.environment import doctor
from threestudio_dreambooth3d.errors import ConfigError
from threestudio_dreambooth3d.pipeline.steps import get_step, steps_for

from fakes import PROMPT, dotlist_of, run_cli

MV_ORDER = ["finetune", "mvdream_model", "mv_finetune", "stage1", "stage2", "multiview_finetune", "stage3", "export",
            "summary"]


def _argv_value(cmd, flag):
    return cmd.argv[cmd.argv.index(flag) + 1]


def test_the_mvdream_prior_adds_its_model_and_finetune_and_keeps_stage_2(make_ctx):
    ctx = make_ctx(prior="mvdream")
    assert [s.name for s in steps_for(ctx.method, prior=ctx.prior)] == MV_ORDER
    assert [s.name for s in steps_for(ctx.method)] == [n for n in MV_ORDER if n not in ("mvdream_model", "mv_finetune")]
    s1, s2, s3 = (get_step(n, ctx.method, ctx.prior).command(ctx) for n in ("stage1", "stage2", "stage3"))
    assert _argv_value(s1, "--config").endswith("dreambooth3d-mvdream-stage1.yaml")
    assert _argv_value(s3, "--config").endswith("dreambooth3d-mvdream-stage3.yaml")
    assert _argv_value(s2, "--config").endswith("dreambooth3d-stage2.yaml")
    d1, d2, d3 = dotlist_of(s1), dotlist_of(s2), dotlist_of(s3)
    # stages 1 and 3: the MVDream folder + the multi-view DreamBooth (partial, then continued)
    assert Path(d1.system.guidance.pretrained_model_name_or_path) == ctx.mvdream_model == ctx.out / "models" / "tiny-mvdream"
    assert Path(d1.system.guidance.checkpoint) == ctx.mv_checkpoint("partial")
    assert Path(d3.system.guidance.pretrained_model_name_or_path) == ctx.mvdream_model
    assert Path(d3.system.guidance.checkpoint) == ctx.checkpoint("multiview")
    assert Path(d3.data.pseudo_views_dir) == ctx.pseudo_views_dir and Path(d3.system.weights) == ctx.last_ckpt("stage1")
    # stage 2 translates with the 2D full DreamBooth on Stable Diffusion, as without the prior
    assert d2.system.guidance.pretrained_model_name_or_path == ctx.model
    assert Path(d2.system.guidance.checkpoint) == ctx.checkpoint("full")
    # smoke: one size, one 4-view object per step, after the stage's own CPU overrides
    assert d1.data.batch_size == 4 and d1.data.resolution_milestones == [] and d1.data.width == 32
    assert d3.data.batch_size == 4 and "batch_size" not in d2.data
    assert get_step("stage1", ctx.method, ctx.prior).upstream == ("mv_finetune",)
    assert set(get_step("stage3", ctx.method, ctx.prior).upstream) == {"stage1", "stage2", "multiview_finetune"}


def test_user_set_wins_over_the_mvdream_smoke_overrides(make_ctx):
    ctx = make_ctx(prior="mvdream", overrides={"stage1": ["data.batch_size=8"]})
    assert dotlist_of(get_step("stage1", ctx.method, ctx.prior).command(ctx)).data.batch_size == 8


def test_mv_finetunes_run_mvdreambooth_on_the_mvdream_folder(make_ctx):
    from threestudio_dreambooth3d.finetune_options import FinetuneOptions

    ctx = make_ctx(prior="mvdream")
    first = FinetuneOptions.parse(get_step("mv_finetune", ctx.method, ctx.prior).command(ctx).argv[4:])
    assert (first.base_model, Path(first.model), Path(first.out)) == ("mvdream", ctx.mvdream_model, ctx.mv_finetune_dir)
    assert first.checkpoint_steps == {"partial": ctx.preset.partial_step} and first.steps == ctx.preset.partial_step
    # its class sets are the multi-view model's own, apart from the 2D run's class images
    assert Path(first.class_images_dir) == ctx.mv_class_images_dir != ctx.class_images_dir
    cont = FinetuneOptions.parse(get_step("multiview_finetune", ctx.method, ctx.prior).command(ctx).argv[4:])
    assert (cont.base_model, Path(cont.model), Path(cont.init_checkpoint)) == (
        "mvdream", ctx.mvdream_model, ctx.mv_checkpoint("partial"))
    assert Path(cont.extra_views) == ctx.pseudo_views_dir and cont.extra_images is None
    assert cont.checkpoint_steps == {"multiview": ctx.preset.multiview_steps}
    # continuing the full model: the photo run trains it too
    full = make_ctx(prior="mvdream", multiview_init="full")
    first = FinetuneOptions.parse(get_step("mv_finetune", full.method, full.prior).command(full).argv[4:])
    assert first.checkpoint_steps == {"partial": full.preset.partial_step, "full": full.preset.finetune_steps}
    cont = FinetuneOptions.parse(get_step("multiview_finetune", full.method, full.prior).command(full).argv[4:])
    assert Path(cont.init_checkpoint) == full.mv_checkpoint("full")


def test_mvdream_model_source(make_ctx, tmp_path, monkeypatch):
    from threestudio_dreambooth3d.environment import hub

    step = get_step("mvdream_model", prior="mvdream")
    folder = tmp_path / "mv-folder"
    folder.mkdir()
    ctx = make_ctx(prior="mvdream", mvdream=str(folder))
    assert ctx.mvdream_model == folder.resolve() and step.command(ctx) is None
    assert step.work_paths(ctx) == []  # a rerun never deletes the user's folder
    ckpt = tmp_path / "sd-v2.1-base-4view.pt"
    ckpt.write_bytes(b"x")
    ctx = make_ctx(prior="mvdream", mvdream=str(ckpt), preset="default")
    cmd = step.command(ctx)
    assert cmd.argv[3:5] == ["convert-mvdream", str(ckpt)]
    assert (_argv_value(cmd, "--base"), Path(_argv_value(cmd, "--out"))) == (ctx.model, ctx.out / "models" / "mvdream")
    assert step.work_paths(ctx) == [ctx.out / "models" / "mvdream"]
    # no --mvdream on a real preset: the hub's released checkpoint, from the HF cache
    ctx = make_ctx(prior="mvdream", preset="default")
    assert ctx.mvdream_source == "MVDream/MVDream:sd-v2.1-base-4view.pt"
    monkeypatch.setattr(hub, "cached_file", lambda repo, name: str(ckpt) if repo == "MVDream/MVDream" else None)
    assert step.command(ctx).argv[4] == str(ckpt)
    assert step.inputs(ctx)["mvdream"] == "MVDream/MVDream:sd-v2.1-base-4view.pt"  # not where the cache keeps it


def test_prior_is_for_dreambooth3d_only(make_ctx):
    with pytest.raises(ConfigError, match="--method dreambooth3d"):
        make_ctx(prior="mvdream", method="latentnerf")
    with pytest.raises(ConfigError, match="prior must be one of"):
        make_ctx(prior="mvdream2")


def test_dry_run_plans_the_mvdream_prior(fake_threestudio, configs, subject, tmp_path, capsys):
    argv = ["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", PROMPT, "--model", "/models/tiny-sd",
            "--out", str(tmp_path / "out"), "--threestudio", str(fake_threestudio), "--configs", str(configs),
            "--dry-run", "--preset", "smoke", "--prior", "mvdream"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if re.match(r"\w+: (run|skip) \(", line)] == MV_ORDER
    assert "finetune --base-model mvdream" in out and "dreambooth3d-mvdream-stage1.yaml" in out
    assert not (tmp_path / "out" / "models").exists()  # a dry run builds nothing
    assert run_cli(argv + ["--set", "mv_finetune:--lora-rank=4"]) == 0
    assert "--lora-rank=4" in capsys.readouterr().out


def test_pseudo_views_as_4_view_sets_spread_around_the_object():
    from threestudio_dreambooth3d.core.pseudo_views import PseudoViewError, multiview_sets

    azimuths = [170, -10, 100, 80, -100, 10, -170, 260, 350, 45]  # 10 views: 2 sets, 2 left out
    sets = multiview_sets(azimuths, 4)
    assert len(sets) == 2 and all(len(s) == 4 for s in sets)
    assert len({i for s in sets for i in s}) == 8
    for s in sets:
        angles = sorted(azimuths[i] % 360 for i in s)
        gaps = [b - a for a, b in zip(angles, angles[1:])] + [360 - angles[-1] + angles[0]]
        assert max(gaps) < 180  # no half of the circle without a view
    with pytest.raises(PseudoViewError, match="at least 4"):
        multiview_sets([0, 90, 180], 4)


def test_doctor_mvdream_rows(tmp_path, monkeypatch):
    from threestudio_dreambooth3d.environment import hub

    assert doctor.check_mvdream(None, tiny=True).status == doctor.OK
    folder = tmp_path / "mv"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    assert doctor.check_mvdream(str(folder)).status == doctor.MISSING
    (folder / "unet" / "config.json").write_text('{"_class_name": "MultiViewUNet"}')
    assert doctor.check_mvdream(str(folder)).status == doctor.OK
    assert doctor.check_mvdream(str(tmp_path / "nope.pt")).status == doctor.MISSING
    assert "in the HF cache" in doctor.check_mvdream(None, cached=lambda r, f: "/cache/x.pt").detail
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    row = doctor.check_mvdream(None, cached=lambda r, f: None)
    assert row.status == doctor.WARN and "will download" in row.detail
    monkeypatch.setattr(hub, "hub_offline", lambda: True)
    assert doctor.check_mvdream(None, cached=lambda r, f: None).status == doctor.MISSING
    gb = 10 ** 9
    small, big = doctor.GpuInfo(True, "T4", 16 * gb, 15 * gb), doctor.GpuInfo(True, "A100", 80 * gb, 79 * gb)
    assert doctor.check_mvdream_gpu(small, needs_gpu=True).status == doctor.WARN
    assert doctor.check_mvdream_gpu(big, needs_gpu=True).status == doctor.OK
    assert doctor.check_mvdream_gpu(doctor.GpuInfo(False), needs_gpu=True).status == doctor.MISSING
    rows = doctor.run_checks("smoke", prior="mvdream", gpu=doctor.GpuInfo(False), out=tmp_path)
    assert [r.name for r in rows if r.name.startswith("MVDream")] == ["MVDream model", "MVDream GPU memory"]
    assert not [r for r in doctor.run_checks("smoke", gpu=doctor.GpuInfo(False), out=tmp_path) if "MVDream" in r.name]


def test_extra_views_need_the_mvdream_base_model(subject, tmp_path, capsys):
    argv = ["finetune", "--subject", str(subject), "--class-noun", "dog", "--out", str(tmp_path / "o"),
            "--extra-views", str(tmp_path / "pseudo")]
    assert run_cli(argv) == 2
    assert "--extra-views (pseudo views as 4-view sets) needs --base-model mvdream" in capsys.readouterr().err


def test_rounds_repeat_the_multiview_steps_on_mvdream(make_ctx):
    from threestudio_dreambooth3d.finetune_options import FinetuneOptions

    ctx = make_ctx(prior="mvdream", rounds=2)
    names = [s.name for s in steps_for(ctx.method, ctx.rounds, ctx.prior)]
    assert names == MV_ORDER[:-2] + ["stage2_r2", "multiview_finetune_r2", "stage3_r2", "export", "summary"]
    r2 = FinetuneOptions.parse(get_step("multiview_finetune_r2", ctx.method, ctx.prior).command(ctx).argv[4:])
    assert (r2.base_model, Path(r2.init_checkpoint)) == ("mvdream", ctx.checkpoint("multiview", 1))
    assert Path(r2.extra_views) == ctx.pseudo_views_for(2)
    s3 = get_step("stage3_r2", ctx.method, ctx.prior).command(ctx)
    assert _argv_value(s3, "--config").endswith("dreambooth3d-mvdream-stage3.yaml")
    d3 = dotlist_of(s3)
    assert Path(d3.system.guidance.checkpoint) == ctx.checkpoint("multiview", 2) and d3.data.batch_size == 4
