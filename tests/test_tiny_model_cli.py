"""``dreambooth3d tiny-model OUT``: the tiny base model docs/THREESTUDIO.md's CPU launch.py commands use."""
from __future__ import annotations

from threestudio_dreambooth3d.cli import main


def test_tiny_model_writes_a_diffusers_folder_that_loads(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "tiny-sd")]) == 0
    assert f"wrote a tiny random Stable Diffusion to {tmp_path / 'tiny-sd'}" in capsys.readouterr().out
    import json

    index = json.loads((tmp_path / "tiny-sd" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert all((tmp_path / "tiny-sd" / part / "config.json").is_file() for part in ("unet", "vae", "text_encoder"))
