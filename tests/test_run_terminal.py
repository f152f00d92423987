"""What ``dreambooth3d run`` shows from its first second: a line before any slow import, a
starting step that says so, and no false "trained on X, guidance loads X" for one model
named two ways."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from threestudio_dreambooth3d.core.checkpoints import model_source, same_model_source
from threestudio_dreambooth3d.pipeline.console import Console
from threestudio_dreambooth3d.pipeline.context import RunContext
from threestudio_dreambooth3d.pipeline.presets import get_preset
from threestudio_dreambooth3d.pipeline.runner import Runner
from threestudio_dreambooth3d.pipeline.steps import Step


def test_the_first_line_comes_before_torch_is_imported(tmp_path):
    # an import hook prints a marker when torch is first imported; the run's first line must precede it
    script = textwrap.dedent("""
        import os, sys
        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":  # the order is all this test needs: stop here
                    print("<<torch imported>>", flush=True)
                    os._exit(0)
                return None
        sys.meta_path.insert(0, Spy())
        from threestudio_dreambooth3d.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", script, "run", "--subject", str(tmp_path / "nowhere"),
                           "--class-noun", "toy", "--prompt", "a sks toy", "--out", str(tmp_path / "out"),
                           "--preset", "smoke"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "THREESTUDIO_ROOT": str(tmp_path / "no-threestudio")})
    lines = proc.stdout.splitlines()
    assert "<<torch imported>>" in lines, proc.stdout + proc.stderr
    first = next(i for i, l in enumerate(lines) if l.startswith("dreambooth3d run: checking"))
    assert str(tmp_path / "out") in lines[first]
    assert "<<torch imported>>" not in lines[:first], proc.stdout


class _Quick(Step):
    name, title = "finetune", "a quick step"

    def run(self, ctx, run_command):
        return {}


def test_a_starting_step_says_it_is_starting(tmp_path, subject_dir):
    ctx = RunContext(out=tmp_path / "out", subject=subject_dir, class_noun="dog", prompt="a sks dog",
                     preset=get_preset("smoke"), model="/models/tiny-sd")
    out = io.StringIO()
    Runner(ctx, steps=[_Quick()], console=Console(0, out=out, err=io.StringIO())).run()
    assert "[1/1] finetune: a quick step: starting\n" in out.getvalue()
    out = io.StringIO()
    Runner(ctx, steps=[_Quick()], console=Console(0, out=out, err=io.StringIO())).run("finetune")
    assert "[1/1] finetune: a quick step: starting (forced by --from finetune)" in out.getvalue()
    assert "not run yet" not in out.getvalue()


def test_one_model_named_by_a_relative_and_an_absolute_path_is_the_same(tmp_path, monkeypatch):
    (tmp_path / "models" / "tiny-sd").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert same_model_source("models/tiny-sd", tmp_path / "models" / "tiny-sd")
    assert same_model_source("./models/../models/tiny-sd", str(tmp_path / "models" / "tiny-sd"))
    assert model_source("models/tiny-sd") == str(tmp_path / "models" / "tiny-sd")  # what a checkpoint records
    assert not same_model_source("models/tiny-sd", "runwayml/stable-diffusion-v1-5")
    assert same_model_source("runwayml/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")


def test_a_short_turntable_becomes_a_watchable_animated_preview_on_the_summary(tmp_path, subject_dir):
    from PIL import Image

    from threestudio_dreambooth3d.pipeline.manifest import Manifest
    from threestudio_dreambooth3d.pipeline.steps import Stage1
    from threestudio_dreambooth3d.pipeline.summary import describe, render_html, render_markdown

    ctx = RunContext(out=tmp_path / "out", subject=subject_dir, class_noun="dog", prompt="a sks dog",
                     preset=get_preset("smoke"), model="/models/tiny-sd")
    save = ctx.save_dir("stage1")
    (save / "it2-test").mkdir(parents=True)
    (save / "it2-test.mp4").write_bytes(b"video")
    for i in range(4):  # threestudio's rgb | normal | opacity strips, named 0.png ... 3.png
        Image.new("RGB", (96, 32), (60 * i, 0, 0)).save(save / "it2-test" / f"{i}.png")
    outputs = Stage1()._video(ctx)
    gif = outputs["turntable_preview"]
    assert gif == ctx.results_dir / "stage1_turntable.gif"
    with Image.open(gif) as im:
        assert im.n_frames == 4 and im.info["loop"] == 0 and im.size == (96, 32)
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
            assert im.convert("RGB").getpixel((5, 5))[0] == 60 * i  # the frames in order
    assert sum(durations) >= 3000  # four frames are a 3 s loop, not a 0.13 s flash
    page = describe(ctx, Manifest(ctx.out), [])
    assert "src='results/stage1_turntable.gif'" in render_html(page)
    assert "(results/stage1_turntable.gif)" in render_markdown(page)
    assert "results/stage1_turntable.mp4" in render_html(page)
