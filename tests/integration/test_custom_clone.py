"""threestudio's own convention: this whole repository cloned into a threestudio checkout's
``custom/``, nothing pip-installed. launch.py loads the clone (its root ``__init__.py``),
which registers our classes; ``cpu_launch.py`` with ``configs/overrides/cpu-smoke.yaml``
runs stage 1 on a CPU, as docs/THREESTUDIO.md tells a user to."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _checkout_with_clone(threestudio_root: Path, tmp: Path) -> Path:
    """A threestudio checkout (links to the real one's entries) whose custom/ holds a copy of this repository."""
    ts = tmp / "threestudio"
    ts.mkdir()
    for entry in threestudio_root.iterdir():
        if entry.name not in ("custom", "outputs", ".git"):
            (ts / entry.name).symlink_to(entry)
    (ts / "custom").mkdir()
    shutil.copytree(REPO, ts / "custom" / "threestudio-dreambooth3d",
                    ignore=shutil.ignore_patterns(".git", "outputs", "__pycache__", "*.egg-info", ".pytest_cache"))
    return ts


def _env_without_our_package() -> dict:
    """For ``python -S``: this interpreter's site-packages folders on PYTHONPATH, so its packages import,
    but no .pth file is processed (our editable install is one), so threestudio_dreambooth3d is not importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "THREESTUDIO_ROOT")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return env


def test_the_repository_cloned_into_custom_registers_and_runs_stage1_on_cpu(threestudio_root, tiny_sd_path,
                                                                           dreambooth_run, tmp_path):
    ts = _checkout_with_clone(threestudio_root, tmp_path)
    env = _env_without_our_package()
    probe = subprocess.run([sys.executable, "-S", "-c", "import threestudio_dreambooth3d"], cwd=ts, env=env,
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0 and "No module named 'threestudio_dreambooth3d'" in probe.stderr, probe.stderr

    clone = "custom/threestudio-dreambooth3d"
    cmd = [sys.executable, "-S", f"{clone}/cpu_launch.py", "--config", f"{clone}/configs/dreambooth3d-stage1.yaml",
           "--train", "--overrides", f"{clone}/configs/overrides/cpu-smoke.yaml",
           "system.prompt_processor.prompt=a sks dog", f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
           f"system.guidance.checkpoint={dreambooth_run}", "trainer.max_steps=1", "trainer.val_check_interval=1",
           f"exp_root_dir={tmp_path / 'outputs'}", "use_timestamp=false", "name=clone", "tag=stage1"]
    proc = subprocess.run(cmd, cwd=ts, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "IMPORT FAILED" not in out and "Traceback" not in out, out[-4000:]
    assert (tmp_path / "outputs" / "clone" / "stage1" / "ckpts" / "last.ckpt").is_file()
    # the override file's keys reached the trial (a 2^15 hash table, 32 px renders), the command line's won
    parsed = (tmp_path / "outputs" / "clone" / "stage1" / "configs" / "parsed.yaml").read_text()
    assert "log2_hashmap_size: 15" in parsed and "width: 32" in parsed and "max_steps: 1" in parsed


LAUNCH_PY_LOADS_CUSTOM = """
import os, runpy, sys, importlib.util
sys.path.insert(0, os.getcwd())
inner = os.path.abspath("custom/threestudio-dreambooth3d/custom/threestudio-dreambooth3d")
# threestudio imports CUDA extensions: the compat stand-ins first, without compat's own registration
spec = importlib.util.spec_from_file_location("threestudio_dreambooth3d", os.path.join(inner, "__init__.py"),
                                              submodule_search_locations=[inner])
module = importlib.util.module_from_spec(spec)
sys.modules["threestudio_dreambooth3d"] = module
spec.loader.exec_module(module)
from threestudio_dreambooth3d.cpu import compat
compat.enable(os.getcwd(), register_adapters=False)
import threestudio
assert "dreambooth-sds-guidance" not in threestudio.__modules__
runpy.run_path("launch.py", run_name="launch")["load_custom_modules"]()  # launch.py's own loader
for name in ("dreambooth-sds-guidance", "dreambooth-prompt-processor", "pseudo-multiview-datamodule",
             "dreambooth3d-system", "latent-rgb-material"):
    threestudio.find(name)
print("REGISTERED")
"""


def test_launch_py_loading_custom_registers_the_clone(threestudio_root, tmp_path):
    ts = _checkout_with_clone(threestudio_root, tmp_path)
    proc = subprocess.run([sys.executable, "-S", "-c", LAUNCH_PY_LOADS_CUSTOM], cwd=ts, env=_env_without_our_package(),
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "REGISTERED" in proc.stdout, out[-4000:]
    assert "IMPORT FAILED" not in out and "Traceback" not in out, out[-4000:]


def test_the_override_file_is_the_smoke_presets_stage_overrides():
    from omegaconf import OmegaConf

    from threestudio_dreambooth3d.pipeline import smoke
    from threestudio_dreambooth3d.cpu.compat import expand_overrides

    expanded = expand_overrides(["--overrides", str(REPO / "configs" / "overrides" / "cpu-smoke.yaml"), "a.b=1"])
    assert expanded[-1] == "a.b=1"  # the command line's keys come last: they win
    assert OmegaConf.from_dotlist(expanded[:-1]) == OmegaConf.from_dotlist(smoke.overrides("stage1"))
