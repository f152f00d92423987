"""threestudio imports torchvision; where it does not import (PyPI's build beside the CPU torch:
"operator torchvision::nms does not exist"), cpu.compat puts a stand-in in its place."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from threestudio_dreambooth3d.cpu.standin import torchvision_mismatch

BROKEN = 'raise RuntimeError("operator torchvision::nms does not exist")\n'

PROBE = textwrap.dedent("""
    import sys
    from threestudio_dreambooth3d.cpu.compat import install_torchvision_stand_in
    print("installed", install_torchvision_stand_in())
    import torchvision.transforms.functional as TF       # threestudio's zero123 guidance and co3d data
    from torchvision import models                         # its perceptual loss
    print("imported", type(models).__name__)
    try:
        TF.resize
    except AttributeError as e:
        print("used:", e)
""")


def _run(tmp_path, init: str) -> str:
    env_path = tmp_path / "site"
    (env_path / "torchvision" / "transforms").mkdir(parents=True)
    (env_path / "torchvision" / "__init__.py").write_text(init)
    (env_path / "torchvision" / "transforms" / "__init__.py").write_text("")
    (env_path / "torchvision" / "transforms" / "functional.py").write_text("def resize(): pass\n")
    (env_path / "torchvision" / "models.py").write_text("")
    env = {"PYTHONPATH": str(env_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_torchvision_that_does_not_import_gets_a_stand_in_that_explains_itself(tmp_path):
    out = _run(tmp_path, BROKEN)
    assert "installed True" in out and "imported BrokenPackageStandIn" in out
    assert "used: torchvision.functional" not in out  # named by its full module path
    # the import error, or (where the installed metadata already tells) the mismatch
    assert "used: torchvision.transforms.functional.resize is not available: torchvision does not import here (" in out
    assert "operator torchvision::nms does not exist" in out or "is a CUDA build" in out or "is built for torch" in out
    assert "pip install torch==2.14.1 torchvision==0.29.1" in out


@pytest.mark.skipif(torchvision_mismatch() is not None, reason="this venv has PyPI's CUDA torchvision beside a CPU torch")
def test_a_torchvision_that_imports_is_left_alone(tmp_path):
    out = _run(tmp_path, "")
    assert "installed False" in out and "imported module" in out and "used:" not in out


@pytest.mark.parametrize("torch, tv, mismatch", [
    ("2.13.0+cpu", "0.28.0", "is a CUDA build"),   # the install command's pair
    ("2.14.1", "0.29.1", None),                    # one index: fine
    ("2.13.0+cpu", "0.28.0+cpu", None),
])
def test_the_metadata_tells_a_cuda_torchvision_beside_a_cpu_torch(monkeypatch, torch, tv, mismatch):
    import importlib.metadata as md

    monkeypatch.setattr(md, "version", lambda name: {"torch": torch, "torchvision": tv}[name])
    why = torchvision_mismatch()
    assert (why is None) if mismatch is None else (mismatch in why)


# torchvision 0.28's import registers fake kernels for two ops whether or not its compiled ops loaded
FAKE_TORCHVISION = """
import torch
for op in ("nms", "qnms"):
    torch.library.register_fake("torchvision::" + op)(lambda dets, scores, iou_threshold: dets)
"""
IMPORT_IT = textwrap.dedent("""
    import importlib.metadata as md, sys
    real = md.version
    md.version = lambda n: {"torch": "2.13.0+cpu", "torchvision": "0.28.0"}.get(n) or real(n)
    if sys.argv[1] == "ours-first":
        import threestudio_dreambooth3d
    import torchvision
    print("torchvision imported")
""")


@pytest.mark.parametrize("ours_first", [True, False])
def test_pypis_torchvision_beside_the_cpu_torch_imports_once_our_package_is_loaded(tmp_path, ours_first):
    (tmp_path / "site" / "torchvision").mkdir(parents=True)
    (tmp_path / "site" / "torchvision" / "__init__.py").write_text(FAKE_TORCHVISION)
    proc = subprocess.run([sys.executable, "-c", IMPORT_IT, "ours-first" if ours_first else "plain"],
                          capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
                          timeout=300)
    if ours_first:
        assert proc.returncode == 0 and "torchvision imported" in proc.stdout, proc.stderr
    else:  # the failure the schemas prevent
        assert proc.returncode != 0 and "operator torchvision::nms does not exist" in proc.stderr
