"""``dreambooth3d sweep`` from its command line: a dry run, bad input failing before any work."""
from __future__ import annotations

import re

from threestudio_dreambooth3d.sweep.plan import cell_seed

from fakes import write_dreambooth_dataset


def test_cli_dry_run_lists_cells_and_bad_input_fails_before_any_work(tmp_path, capsys, fake_threestudio):
    from threestudio_dreambooth3d.cli import main

    root = write_dreambooth_dataset(tmp_path / "dataset")
    base = ["sweep", "--dataset", str(root), "--out", str(tmp_path / "sweep"), "--threestudio",
            str(fake_threestudio), "--preset", "smoke"]
    assert main(base + ["--subjects", "bear_plushie", "dog", "--max-prompts", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    # every method `run --method` offers: 2 subjects x 2 prompts x 3 methods
    assert "12 cells = 2 subject(s)" in out and "x 3 method(s)" in out and "0 finished, 12 to run" in out
    assert f"run  bear_plushie/a-sks-stuffed-animal-on-top-of-pink-fabric/dreambooth3d  seed=" \
           f"{cell_seed(0, 'bear_plushie', 'a sks stuffed animal on top of pink fabric', 'dreambooth3d')}" in out
    assert "dog/a-sks-dog-wearing-a-red-hat/dreambooth3d" in out
    assert not (tmp_path / "sweep" / "cells").exists()

    for extra, message in (
        (["--prompt", "a {identifier} dog"], r"lacks \{class\}"),
        (["--methods", "nerfstudio"], "'nerfstudio': `dreambooth3d run` offers"),
        (["--subjects", "cat"], "'cat' is not in"),
    ):
        assert main(base + extra) == 2
        assert re.search(message, capsys.readouterr().err), extra
    assert main(["sweep", "--out", str(tmp_path / "sweep")]) == 2
    assert "--dataset DIR (DreamBooth layout) or --subject FOLDER:CLASS" in capsys.readouterr().err
    (root / "dog" / "notes.docx").write_text("x")
    assert main(base) == 2
    assert "notes.docx is not an image" in capsys.readouterr().err
    assert not (tmp_path / "sweep" / "cells").exists()
