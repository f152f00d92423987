"""The command lines each pipeline step builds for launch.py and ``dreambooth3d finetune``,
read back with the real parsers; the workspace launch.py runs in."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from threestudio_dreambooth3d.pipeline import commands
from threestudio_dreambooth3d.pipeline.steps import get_step

from fakes import dotlist_of


def test_launch_commands_for_each_stage(make_ctx, fake_threestudio, monkeypatch):
    monkeypatch.setattr(commands, "missing_cuda_pieces", lambda: [])  # a GPU machine with tinycudann/nvdiffrast
    ctx = make_ctx(preset="default", prompt="a sks dog: sitting, 3 hats")
    modes = {}
    for step in ("stage1", "stage2", "stage3", "export"):
        cmd = get_step(step, ctx.method).command(ctx)
        assert cmd.argv[1] == str(fake_threestudio / "launch.py") and cmd.cwd == ctx.workspace
        assert cmd.argv[cmd.argv.index("--gpu") + 1] == "0"
        d = dotlist_of(cmd)
        # trial folder at a known place
        assert (Path(d.exp_root_dir) / d.name / d.tag) == ctx.trial_dir(step) and d.use_timestamp is False
        modes[step] = next(a for a in cmd.argv if a in ("--train", "--test", "--export"))
        if step != "export":
            # the prompt reads back as itself despite ': ' and ','
            assert d.system.prompt_processor.prompt == "a sks dog: sitting, 3 hats"
            assert d.system.guidance.pretrained_model_name_or_path == "/models/tiny-sd"
            assert Path(cmd.argv[cmd.argv.index("--config") + 1]) == ctx.configs_dir / f"dreambooth3d-{step}.yaml"
    assert modes == {"stage1": "--train", "stage2": "--test", "stage3": "--train", "export": "--export"}
    s1, s2, s3, ex = (dotlist_of(get_step(s, ctx.method).command(ctx)) for s in ("stage1", "stage2", "stage3", "export"))
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
    dotlist = dotlist_of(cmd)
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


def test_workspace_links_our_extension_and_threestudio_assets(make_ctx, fake_threestudio):
    ctx = make_ctx()
    ws = commands.prepare_workspace(ctx)
    ext = ws / "custom" / "threestudio-dreambooth3d"
    assert (ext / "__init__.py").is_file() and (ext / "pipeline" / "runner.py").is_file()
    assert (ws / "load").resolve() == fake_threestudio / "load"
    assert commands.prepare_workspace(ctx) == ws  # idempotent


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


def test_smoke_baselines_render_at_their_tested_size(make_ctx):
    """Latent-NeRF trains on latents: the smoke run renders them at the tiny SD's latent size (16 px,
    what the threestudio tier tests), DreamFusion's RGB baseline at stage 1's 32 px."""
    def baseline_args(method, **kw):
        ctx = make_ctx(method=method, **kw)
        return dotlist_of(get_step("baseline", method).command(ctx))

    latent = baseline_args("latentnerf")
    assert (latent.data.width, latent.data.height, latent.data.eval_width) == (16, 16, 32)
    assert latent.trainer.max_steps == 2
    assert (baseline_args("dreamboothfusion").data.width, baseline_args("dreamboothfusion").data.height) == (32, 32)
    # the user's --set still wins
    assert baseline_args("latentnerf", overrides={"baseline": ["data.width=24"]}).data.width == 24
