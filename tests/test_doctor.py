"""``dreambooth3d doctor`` and the checks ``run`` makes first, on fake environments:
monkeypatched package versions, imports, GPUs, HF caches and disks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from threestudio_dreambooth3d.environment import doctor
from threestudio_dreambooth3d.environment.doctor import MISSING, OK, WARN, INFO, Check, GpuInfo

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a sks dog wearing a hat"


def _versions(table):
    return lambda name: table.get(name)


def _no_module(name):
    return None


# -- packages -----------------------------------------------------------------------------

def test_requirement_missing_or_at_a_wrong_version_names_the_one_install_command():
    row = doctor.check_requirement("libigl>=2.4,<2.6", _versions({"libigl": "2.6.3"}), _no_module)
    assert row.status == MISSING and "2.6.3 installed" in row.detail and "<2.6" in row.detail
    assert row.fix == 'pip install torch==2.13.0 -e ".[test,threestudio]"'  # the README's, not a line per package
    row = doctor.check_requirement("jaxtyping", _versions({}), _no_module)
    assert row.status == MISSING and row.fix == doctor.INSTALL_COMMAND
    assert doctor.check_requirement("libigl>=2.4,<2.6", _versions({"libigl": "2.5.1"}), _no_module).status == OK
    # opencv-python instead of -headless still provides cv2
    found = doctor.check_requirement("opencv-python-headless", _versions({}), lambda m: object() if m == "cv2" else None)
    assert found.status == OK and "cv2" in found.detail


def test_the_package_list_is_ours_plus_the_threestudio_extra():
    reqs = doctor.requirements()
    names = {r.split("<")[0].split(">")[0].split("=")[0].lower() for r in reqs}
    # ours, threestudio's (what launch.py imports), not the test extra's
    assert {"diffusers", "transformers", "jaxtyping", "typeguard", "tensorboard", "pytorch-lightning", "libigl"} <= names
    assert "pytest" not in names
    assert len(names) == len(reqs)  # one row per distribution
    assert any(r.startswith("libigl") and "<2.6" in r for r in reqs)
    # listed in both (plain in ours, bounded in the extra): one row with the bound
    assert [r for r in reqs if r.startswith("omegaconf")] == ["omegaconf>=2.3"]


def test_torchvision_missing_or_broken_is_information_and_pins_the_installed_torch():
    # threestudio loads with cpu.compat's stand-in: not blocking
    row = doctor.check_torchvision(_versions({"torch": "2.14.1"}))
    assert row.status == INFO and row.fix == 'pip install "torch==2.14.1" torchvision' and not row.blocking
    broken = doctor.check_torchvision(_versions({"torch": "2.13.0", "torchvision": "0.28.0"}), lambda name: False)
    assert broken.status == INFO and "does not import" in broken.detail
    assert doctor.check_torchvision(_versions({"torch": "2.14.1", "torchvision": "0.29.1"}), lambda n: True).status == OK


# -- GPU and CUDA pieces --------------------------------------------------------------------

def test_gpu_row():
    row = doctor.check_gpu(needs_gpu=True, info=GpuInfo(False))
    assert row.status == MISSING and "--preset smoke" in row.fix
    assert doctor.check_gpu(needs_gpu=False, info=GpuInfo(False)).status == INFO
    row = doctor.check_gpu(needs_gpu=True, info=GpuInfo(True, "NVIDIA H100", 80 << 30, 70 << 30))
    assert row.status == OK and "H100" in row.detail and "80.0 GiB" in row.detail and "70.0 GiB free" in row.detail


def test_cuda_pieces_say_which_fallback_stands_in(monkeypatch):
    none = lambda name: False  # noqa: E731
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    rows = {r.name: r for r in doctor.check_cuda_pieces(gpu=True, importable=none, have_tcnn_fallback=True)}
    assert rows["tinycudann"].status == WARN and "pure-torch fallback" in rows["tinycudann"].detail
    assert "tiny-cuda-nn" in rows["tinycudann"].fix
    assert rows["nvdiffrast"].status == WARN and "cpu/nvdiffrast.py" in rows["nvdiffrast"].detail
    assert "nvdiffrast" in rows["nvdiffrast"].fix
    assert rows["nerfacc kernels"].status == MISSING  # not installed at all
    rows = {r.name: r for r in doctor.check_cuda_pieces(gpu=True, importable=lambda n: n == "nerfacc")}
    assert rows["nerfacc kernels"].status == WARN and "nvcc" in rows["nerfacc kernels"].detail
    rows = {r.name: r for r in doctor.check_cuda_pieces(gpu=True, importable=none, have_tcnn_fallback=False)}
    assert rows["tinycudann"].status == MISSING
    rows = {r.name: r for r in doctor.check_cuda_pieces(gpu=False, importable=lambda n: n == "nerfacc")}
    assert all(r.status == INFO for r in rows.values()), rows  # the CPU fallbacks serve the smoke preset
    assert "cpu/nvdiffrast.py" in rows["nvdiffrast"].detail and "cpu/nerfacc.py" in rows["nerfacc kernels"].detail
    rows = {r.name: r for r in doctor.check_cuda_pieces(gpu=True, importable=lambda n: True)}
    assert rows["tinycudann"].status == OK and rows["nvdiffrast"].status == OK


def test_a_gpu_run_without_a_cuda_extension_goes_through_the_stand_ins(make_ctx_default, monkeypatch):
    from threestudio_dreambooth3d.pipeline import commands
    from threestudio_dreambooth3d.pipeline.steps import get_step

    monkeypatch.setattr(commands, "missing_cuda_pieces", lambda: ["tinycudann"])
    assert "threestudio_dreambooth3d.cpu.compat" in get_step("stage1").command(make_ctx_default).argv
    monkeypatch.setattr(commands, "missing_cuda_pieces", lambda: [])
    argv = get_step("stage1").command(make_ctx_default).argv
    assert "threestudio_dreambooth3d.cpu.compat" not in argv and argv[1].endswith("launch.py")


@pytest.fixture
def make_ctx_default(tmp_path):
    from threestudio_dreambooth3d.pipeline.context import RunContext
    from threestudio_dreambooth3d.pipeline.presets import get_preset

    root = _checkout(tmp_path)
    return RunContext(out=tmp_path / "out", subject=tmp_path, class_noun="dog", prompt=PROMPT,
                      preset=get_preset("default"), model="org/sd", threestudio_root=root,
                      configs_dir=REPO / "configs")


# -- model, disk, threestudio -----------------------------------------------------------------

def test_model_row(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    folder = tmp_path / "sd"
    folder.mkdir()
    assert doctor.check_model(str(folder)).status == MISSING  # no model_index.json
    (folder / "model_index.json").write_text("{}")
    assert doctor.check_model(str(folder)).status == MISSING  # no unet/, vae/...
    from threestudio_dreambooth3d.core.model_folder import SD_PARTS

    for part, file in SD_PARTS.items():
        (folder / part).mkdir()
        (folder / part / file).write_text("{}")
    assert doctor.check_model(str(folder)).status == OK
    assert doctor.check_model(str(tmp_path / "nowhere")).status == MISSING
    assert doctor.check_model(None).status == OK  # the smoke preset builds its own
    cached = doctor.check_model("org/sd", cached=lambda rid: "/cache/models--org--sd/model_index.json")
    assert cached.status == OK and "HF cache" in cached.detail
    assert doctor.check_model("org/sd", cached=lambda rid: None).status == WARN  # will download
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = doctor.check_model("org/sd", cached=lambda rid: None)
    assert offline.status == MISSING and "HF_HUB_OFFLINE" in offline.detail and "local folder" in offline.fix


def test_disk_row(tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: usage(100 << 30, 99 << 30, 1 << 30))
    row = doctor.check_disk(tmp_path / "not" / "yet", 10 << 30)  # an out folder not created yet
    assert row.status == MISSING and "1.0 GiB free" in row.detail and str(tmp_path) in row.detail
    assert doctor.check_disk(tmp_path, 200 << 20).status == OK


def _checkout(tmp_path, commit=None, packed=False, detached=False) -> Path:
    root = tmp_path / "threestudio"
    (root / "threestudio").mkdir(parents=True)
    (root / "threestudio" / "__init__.py").write_text('__version__ = "0.2.3"\n')
    (root / "launch.py").write_text("")
    if commit:
        git = root / ".git"
        (git / "refs" / "heads").mkdir(parents=True)
        if detached:
            (git / "HEAD").write_text(commit + "\n")
        else:
            (git / "HEAD").write_text("ref: refs/heads/main\n")
            if packed:
                (git / "packed-refs").write_text(f"# pack-refs\n{commit} refs/heads/main\n")
            else:
                (git / "refs" / "heads" / "main").write_text(commit + "\n")
    return root


@pytest.mark.parametrize("how", ["loose", "packed", "detached"])
def test_threestudio_commit_is_read_and_compared_with_the_tested_one(tmp_path, how):
    tested = doctor.TESTED_THREESTUDIO_COMMIT
    root = _checkout(tmp_path, tested, packed=how == "packed", detached=how == "detached")
    assert doctor.git_commit(root) == tested
    rows = {r.name: r for r in doctor.check_threestudio(root)}
    assert rows["threestudio"].status == OK and "0.2.3" in rows["threestudio"].detail
    assert rows["threestudio commit"].status == OK


def test_other_threestudio_commit_warns_and_a_wrong_root_is_missing(tmp_path):
    root = _checkout(tmp_path, "f" * 40)
    rows = {r.name: r for r in doctor.check_threestudio(root)}
    assert rows["threestudio commit"].status == WARN and "28d9d80" in rows["threestudio commit"].detail
    wrong = doctor.check_threestudio(tmp_path / "empty")
    assert wrong[0].status == MISSING and "not a threestudio checkout" in wrong[0].detail
    assert doctor.git_commit(_checkout(tmp_path / "b")) is None


# -- the command and run ----------------------------------------------------------------------

@pytest.fixture
def all_good(monkeypatch, tmp_path):
    """An environment with everything: packages present, a GPU, the CUDA pieces."""
    monkeypatch.setattr(doctor, "check_packages", lambda: [Check("jaxtyping", OK, "0.3.11")])
    monkeypatch.setattr(doctor, "gpu_info", lambda: GpuInfo(True, "Fake GPU", 24 << 30, 20 << 30))
    monkeypatch.setattr(doctor, "check_cuda_pieces", lambda gpu: [Check("tinycudann", OK, "installed")])
    monkeypatch.setattr(doctor, "_hub_cached", lambda rid: "/cache/model_index.json")
    return _checkout(tmp_path, doctor.TESTED_THREESTUDIO_COMMIT)


def run_cli(argv):
    from threestudio_dreambooth3d.cli import main

    return main(argv)


def test_doctor_command_prints_one_table_and_exits_by_what_is_missing(all_good, monkeypatch, capsys):
    assert run_cli(["doctor", "--threestudio", str(all_good)]) == 0
    out = capsys.readouterr().out
    for name in ("threestudio", "threestudio commit", "jaxtyping", "CUDA GPU", "tinycudann", "base model", "free disk"):
        assert f"\n{name} " in "\n" + out, name
    assert "ready for --preset default" in out
    monkeypatch.setattr(doctor, "check_packages",
                        lambda: [doctor.check_requirement("jaxtyping", _versions({}), _no_module)])
    assert run_cli(["doctor", "--threestudio", str(all_good)]) == 1
    out = capsys.readouterr().out
    assert f"jaxtyping: {doctor.INSTALL_COMMAND}" in out and "1 missing for --preset default: jaxtyping" in out


def test_run_stops_before_any_work_when_something_is_missing(all_good, monkeypatch, tmp_path, subject_dir, capsys):
    monkeypatch.setattr(doctor, "gpu_info", lambda: GpuInfo(False))
    out = tmp_path / "out"
    argv = ["run", "--subject", str(subject_dir), "--class-noun", "dog", "--prompt", PROMPT,
            "--out", str(out), "--threestudio", str(all_good), "--preset", "default"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "CUDA GPU" in err and "--preset smoke" in err and "dreambooth3d doctor" in err
    assert not out.exists()  # nothing built, nothing written
    # a dry run shows the plan and only warns
    assert run_cli(argv + ["--configs", str(REPO / "configs"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "CUDA GPU" in captured.err and "finetune: run" in captured.out


def test_doctor_modules_import_without_torch():
    code = ("import sys; import threestudio_dreambooth3d.environment.doctor, threestudio_dreambooth3d.cli.doctor; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_default_preset_without_gpu_points_to_smoke(fake_threestudio, tmp_path):
    from threestudio_dreambooth3d.environment.doctor import MISSING, GpuInfo, run_checks

    rows = {r.name: r for r in run_checks("default", threestudio=str(fake_threestudio), out=tmp_path,
                                          gpu=GpuInfo(False))}
    assert rows["CUDA GPU"].status == MISSING and "--preset smoke" in rows["CUDA GPU"].fix
    rows = {r.name: r for r in run_checks("smoke", threestudio=str(fake_threestudio), out=tmp_path,
                                          gpu=GpuInfo(False))}
    assert rows["CUDA GPU"].status != MISSING
