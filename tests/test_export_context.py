"""Every method's export uses nvdiffrast's CUDA context (the OpenGL default needs EGL, absent on headless GPU servers)."""
import shutil
from pathlib import Path

import pytest
import yaml

from threestudio_dreambooth3d.pipeline.context import METHODS

REPO = Path(__file__).resolve().parents[1]
CUDA_CONTEXT = "system.exporter.context_type=cuda"


@pytest.fixture
def run_argv(tmp_path, subject_dir):
    threestudio = tmp_path / "threestudio"
    (threestudio / "threestudio").mkdir(parents=True)
    (threestudio / "threestudio" / "__init__.py").write_text("")
    (threestudio / "launch.py").write_text("")
    (threestudio / "load").mkdir()
    configs = shutil.copytree(REPO / "configs", tmp_path / "configs")
    subject = shutil.copytree(subject_dir, tmp_path / "subject")
    return ["run", "--subject", str(subject), "--class-noun", "dog", "--prompt", "a sks dog",
            "--out", str(tmp_path / "out"), "--threestudio", str(threestudio), "--configs", str(configs), "--dry-run"]


@pytest.mark.parametrize("method", METHODS)
def test_default_preset_dry_run_exports_with_the_cuda_context(method, run_argv, capsys):
    from threestudio_dreambooth3d.cli import main

    # the default preset (the GPU run), as a user would launch it
    assert main(run_argv + ["--method", method]) == 0
    lines = capsys.readouterr().out.splitlines()
    export = lines[lines.index(next(line for line in lines if line.startswith("export: run"))) + 1]
    assert "--export" in export and CUDA_CONTEXT in export, export


# every experiment config (a system_type); configs/overrides/ holds dotlist override files
CONFIGS = sorted(str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")
                 if "system_type" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_exports_with_the_cuda_context(config):
    assert len(CONFIGS) >= 9
    # a parsed config carries it, so `launch.py --export` by hand (docs/THREESTUDIO.md) is safe too
    system = yaml.safe_load((REPO / "configs" / config).read_text())["system"]
    assert system["exporter"]["context_type"] == "cuda"
