"""On a GPU, a CUDA piece replaced by its pure-torch stand-in is said once on the terminal with its measured cost."""
import shutil
from pathlib import Path

import pytest
import torch

from threestudio_dreambooth3d.cpu import standin_cost

REPO = Path(__file__).resolve().parents[1]


def test_notice_names_the_piece_its_cost_and_the_fix():
    msg = standin_cost.standin_notice(True, ["tinycudann"], lambda piece: 0.25)
    assert "tinycudann is missing on this GPU" in msg and "250 ms per NeRF training step" in msg
    assert "~1.4 h over the default run's 20,000 NeRF steps" in msg and "tiny-cuda-nn" in msg
    assert standin_cost.standin_notice(False, ["tinycudann"], lambda piece: 0.25) is None  # a CPU run expects them
    assert standin_cost.standin_notice(True, [], lambda piece: 0.25) is None


@pytest.mark.parametrize("piece", list(standin_cost.PIECES))
def test_each_stand_in_is_really_timed(piece):
    assert 0 < standin_cost.measure(piece, torch.device("cpu"), scale=0.01) < 60


def test_run_on_a_gpu_without_tinycudann_says_so_once_with_the_measured_cost(tmp_path, subject_dir, monkeypatch, capsys):
    from threestudio_dreambooth3d.cli import main
    from threestudio_dreambooth3d.environment import doctor

    # a GPU machine (faked: "cuda available") where tinycudann is missing and nerfacc's kernels built
    monkeypatch.setattr(doctor, "gpu_info", lambda: doctor.GpuInfo(True, "NVIDIA H200", 140 << 30, 139 << 30))
    pieces = doctor.check_cuda_pieces
    monkeypatch.setattr(doctor, "check_cuda_pieces", lambda gpu, **kw: pieces(
        gpu, importable=lambda name: name != "tinycudann", have_tcnn_fallback=True))
    monkeypatch.setattr(doctor.shutil, "which", lambda name: "/usr/bin/" + name)  # nvcc found
    timed = []
    monkeypatch.setattr(standin_cost, "measure", lambda piece, device: timed.append((piece, device.type)) or 0.5)
    threestudio = tmp_path / "threestudio"
    (threestudio / "threestudio").mkdir(parents=True)
    (threestudio / "threestudio" / "__init__.py").write_text("")
    (threestudio / "launch.py").write_text("")
    (threestudio / "load").mkdir()
    argv = ["run", "--subject", str(shutil.copytree(subject_dir, tmp_path / "subject")), "--class-noun", "dog",
            "--prompt", "a sks dog", "--out", str(tmp_path / "out"), "--threestudio", str(threestudio),
            "--configs", str(shutil.copytree(REPO / "configs", tmp_path / "configs")), "--dry-run"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("tinycudann is missing on this GPU") == 1, err
    assert "measured here at 500 ms per NeRF training step" in err and "~2.8 h" in err
    assert "pure-torch fallback" not in err  # doctor's own row is not said a second time
    assert timed == [("tinycudann", "cuda")]
    # the smoke preset runs on the CPU on purpose: nothing to say there
    assert main(argv + ["--preset", "smoke", "--out", str(tmp_path / "smoke")]) == 0
    assert "is missing on this GPU" not in capsys.readouterr().err
