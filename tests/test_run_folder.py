"""A run folder nothing can corrupt (issue 20): one process per folder, no non-finite weights
written, options refused before any work. CI tier: tiny models, real subprocesses where it matters."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from threestudio_dreambooth3d.cli import main
from threestudio_dreambooth3d.core import checkpoints
from threestudio_dreambooth3d.errors import TrainingDivergedError

CLI = [sys.executable, "-m", "threestudio_dreambooth3d.cli"]


# -- 2. non-finite weights are never written -----------------------------------------------------

def test_diverged_finetune_writes_no_checkpoint_and_says_what_to_change(tiny_sd_path, subject_dir, tmp_path, capsys):
    # lr 1e3: the second update turns the LoRA weights to NaN while that step's loss was still finite
    rc = main(["finetune", "--subject", str(subject_dir), "--class-noun", "dog", "--model", str(tiny_sd_path),
               "--out", str(tmp_path), "--steps", "2", "--checkpoints", "partial=1,full=2", "--lr", "1e3",
               "--num-class-images", "1", "--lora-rank", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "diverged" in err and "lower --lr" in err and "rerun the same command" not in err
    assert "at step 2" in err
    # step 1's checkpoint was finite and is kept; nothing of step 2 (NaN weights) is written
    assert not (tmp_path / "checkpoints" / "full").exists()
    for name, path in [("partial", tmp_path / "checkpoints" / "partial"), ("state", tmp_path / "state" / "latest.pt")]:
        if path.is_dir():
            from safetensors.torch import load_file
            state = {f.name: load_file(str(f)) for f in path.glob("*.safetensors")}
        elif path.exists():  # the resumable state is saved by time: maybe not at all in two steps
            state = torch.load(path, weights_only=False)
            assert state["step"] == 1
        else:
            continue
        assert not checkpoints.nonfinite_tensors(state), name


def test_no_checkpoint_with_a_nonfinite_tensor_is_written(tmp_path):
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="NaN/inf.*unet.safetensors/weight"):
        checkpoints.save_checkpoint(tmp_path / "ckpt", {"unet": (layer, True)}, {"name": "x"})
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("lr", ["nan", "inf", "0", "-1e-4", "abc"])
def test_bad_learning_rate_is_refused_before_any_work(tiny_sd_path, subject_dir, tmp_path, capsys, lr):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--subject", str(subject_dir), "--class-noun", "dog", "--model", str(tiny_sd_path),
              "--out", str(tmp_path / "o"), "--lr", lr])
    assert e.value.code == 2
    assert "--lr" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # no class images, nothing


def test_config_refuses_a_nonfinite_learning_rate(tiny_sd_path, subject_dir, tmp_path):
    from threestudio_dreambooth3d.core.dreambooth import DreamBoothConfig
    from threestudio_dreambooth3d.errors import ConfigError

    with pytest.raises(ConfigError, match="learning_rate must be a finite number above 0"):
        DreamBoothConfig(pretrained_model=str(tiny_sd_path), subject_dir=str(subject_dir), class_noun="dog",
                         output_dir=str(tmp_path), learning_rate=float("nan"))


# -- 1. one process per output folder --------------------------------------------------------------

_HOLD = """
import sys, time
from threestudio_dreambooth3d.pipeline.lock import folder_lock
with folder_lock(sys.argv[1], argv=["dreambooth3d", "run", "--out", sys.argv[1]]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold_lock(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("command", ["run", "finetune"])
def test_a_second_process_on_a_locked_folder_stops_at_once_naming_the_first(tmp_path, subject_dir, command):
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        argv = {"run": ["run", "--preset", "smoke", "--prompt", "a sks dog"],
                "finetune": ["finetune", "--model", str(tmp_path / "no-model")]}[command]
        t0 = time.monotonic()
        second = subprocess.run(CLI + argv + ["--subject", str(subject_dir), "--class-noun", "dog", "--out", str(out)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert time.monotonic() - t0 < 60
        assert f"is in use by process {holder.pid}" in second.stderr
        assert "dreambooth3d run --out" in second.stderr and " since " in second.stderr
        assert holder.poll() is None  # the first one is untouched
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path):
    from threestudio_dreambooth3d.pipeline.lock import INFO_FILE, folder_lock

    holder = _hold_lock(tmp_path)
    holder.kill()  # kill -9: no clean-up ran, the info file is still there
    holder.wait()
    assert (tmp_path / INFO_FILE).exists()
    with folder_lock(tmp_path, argv=["me"]):
        assert json.loads((tmp_path / INFO_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / INFO_FILE).exists()


def test_a_child_of_the_holder_works_under_its_lock(tmp_path):
    # a sweep cell locks its folder and runs `dreambooth3d run` there
    code = ("import sys, subprocess\nfrom threestudio_dreambooth3d.pipeline.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n"
            "    sys.exit(subprocess.run([sys.executable, '-c', 'import sys\\n"
            "from threestudio_dreambooth3d.pipeline.lock import folder_lock\\n"
            "with folder_lock(sys.argv[1]): print(\"child ran\")', sys.argv[1]]).returncode)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "child ran" in proc.stdout


def test_a_sweep_cell_another_process_runs_is_reported_and_left_alone(tmp_path):
    from threestudio_dreambooth3d.sweep.cell import run_cell
    from threestudio_dreambooth3d.sweep.plan import Cell

    out = tmp_path / "cell"
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    cell = Cell("dog", str(tmp_path), "dog", "{}", "a sks dog", "dreambooth3d", 0, str(out), touch, touch, "f")
    holder = _hold_lock(out)
    try:
        record = run_cell(cell)
    finally:
        holder.kill()
        holder.wait()
    assert record["status"] == "failed" and f"process {holder.pid}" in record["error"]
    assert not marker.exists() and not cell.record_path.exists()  # nothing run, the live cell's record untouched
    assert run_cell(cell)["status"] == "done" and marker.exists()  # its lock died with it


# -- 5. checked before any work ---------------------------------------------------------------------

def test_out_that_is_a_file_is_refused(tmp_path, subject_dir, capsys):
    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        rc = main(["run", "--preset", "smoke", "--subject", str(subject_dir), "--class-noun", "dog",
                   "--prompt", "a sks dog", "--out", str(out)])
        assert rc == 2
        assert "is a file, not a folder" in capsys.readouterr().err


def test_out_on_a_read_only_disk_is_refused(tmp_path, monkeypatch):
    import errno
    import tempfile

    from threestudio_dreambooth3d.errors import ConfigError
    from threestudio_dreambooth3d.pipeline.checks import check_output_folder

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)  # root ignores chmod; a real RO mount needs root
    with pytest.raises(ConfigError, match="cannot write in --out .*read-only"):
        check_output_folder(tmp_path / "o")


def test_a_long_prompt_gives_a_bounded_default_folder():
    from argparse import Namespace

    from threestudio_dreambooth3d.cli.run import output_folder

    a, b = ("a sks dog " + "very " * 400 + end for end in ("red", "blue"))
    fa, fb = output_folder(Namespace(out=None, prompt=a)), output_folder(Namespace(out=None, prompt=b))
    assert len(fa.name) <= 60 and fa != fb


@pytest.mark.parametrize("command", ["run", "finetune"])
def test_an_empty_class_noun_is_refused(tmp_path, subject_dir, capsys, command):
    extra = ["--prompt", "a sks"] if command == "run" else []
    with pytest.raises(SystemExit):
        main([command, "--subject", str(subject_dir), "--class-noun", " ", "--out", str(tmp_path / "o"), *extra])
    assert "--class-noun: must not be empty" in capsys.readouterr().err


def test_the_smoke_disk_check_asks_for_what_a_smoke_run_writes(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from threestudio_dreambooth3d.environment import doctor

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, 0, 25 * 10**6))  # a smoke run writes 27 MB
    row = doctor.check_disk(tmp_path, doctor.MIN_FREE_BYTES["smoke"])
    assert row.status == doctor.MISSING and "free some space" in row.fix


def test_option_values_are_checked_against_the_annotated_types():
    from typing import List, Literal, Optional, Union

    from threestudio_dreambooth3d.pipeline.validate import option_errors

    class FakeTrainer:  # as Lightning's Trainer declares its options
        def __init__(self, max_steps: int = -1, val_check_interval: Optional[Union[int, float]] = None,
                     precision: Optional[Literal[32, "16-mixed", "bf16-mixed"]] = 32, enable_progress_bar: bool = True,
                     devices: Union[List[int], str, int] = "auto", callbacks: Optional[object] = None):
            pass

    good = {"max_steps": 10, "val_check_interval": 0.5, "precision": "16-mixed", "enable_progress_bar": False,
            "devices": [0], "callbacks": "anything"}
    assert option_errors("stage1", "trainer", FakeTrainer, good, []) == []
    bad = {"max_steps": "abc", "precision": "fp8", "enable_progress_bar": "yes", "val_check_interval": "often"}
    errors = option_errors("stage1", "trainer", FakeTrainer, bad, ["max_steps=abc", "trainer.max_steps=abc"])
    assert errors[0] == "stage1: config key trainer.max_steps (from --set): 'abc' is not of the type FakeTrainer expects (int)"
    assert len(errors) == 4 and all("is not of the type" in e for e in errors)


@pytest.mark.parametrize("step, option, expected", [
    ("finetune", "--no-such-flag=1", "unrecognized arguments: --no-such-flag=1"),
    ("finetune", "--lr=nan", "--lr: nan is not a finite positive learning rate"),
    ("multiview_finetune", "--lora-rank=many", "--lora-rank: invalid int value: 'many'"),
    ("finetune", "--steps=1", "checkpoint steps"),  # the preset's checkpoints lie beyond it
])
def test_finetune_options_given_to_run_are_parsed_before_any_work(tmp_path, step, option, expected):
    from threestudio_dreambooth3d.errors import ConfigError
    from threestudio_dreambooth3d.pipeline.checks import check_finetune_options
    from threestudio_dreambooth3d.pipeline.context import RunContext
    from threestudio_dreambooth3d.pipeline.presets import get_preset

    ctx = RunContext(out=tmp_path, subject=tmp_path, class_noun="dog", prompt="a sks dog", preset=get_preset("smoke"),
                     model=str(tmp_path / "tiny"), overrides={step: [option]})
    with pytest.raises(ConfigError) as e:
        check_finetune_options(ctx)
    assert f"{step} options (--set {step}:{option})" in str(e.value) and expected in str(e.value)
    ctx.overrides = {}
    check_finetune_options(ctx)  # the preset's own options parse


@pytest.mark.parametrize("part", ["unet", "vae"])
def test_a_model_folder_missing_a_part_is_named(tiny_sd_path, tmp_path, part, capsys):
    import shutil

    from threestudio_dreambooth3d.environment import doctor

    model = tmp_path / "model"
    shutil.copytree(tiny_sd_path, model)
    shutil.rmtree(model / part)
    row = doctor.check_model(str(model))
    assert row.status == doctor.MISSING and f"lacks {part}/config.json" in row.detail
    rc = main(["finetune", "--subject", str(tmp_path), "--class-noun", "dog", "--model", str(model),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and f"lacks {part}/config.json" in capsys.readouterr().err


def test_a_diverged_finetune_in_run_says_what_to_change_not_to_rerun(tmp_path):
    from threestudio_dreambooth3d.errors import StepFailedError
    from threestudio_dreambooth3d.pipeline import commands
    from threestudio_dreambooth3d.pipeline.runner import execute

    code = "raise SystemExit('TrainingDivergedError: DreamBooth training diverged: the loss became nan at step 2')"
    cmd = commands.Command([sys.executable, "-c", code], cwd=tmp_path, log_name="finetune")
    with pytest.raises(StepFailedError) as e:
        execute(cmd, tmp_path / "finetune.log")
    assert "--set finetune:--lr=" in str(e.value) and "rerun the same command" not in str(e.value)


# -- 6. SIGTERM ends the children, like Ctrl-C ---------------------------------------------------

_RUN_UNDER_SIGTERM = """
import sys
from pathlib import Path
from threestudio_dreambooth3d.cli import terminate_like_ctrl_c
from threestudio_dreambooth3d.cli.run import run_steps
from threestudio_dreambooth3d.pipeline.commands import Command
from threestudio_dreambooth3d.pipeline.runner import execute

tmp = Path(sys.argv[1])
child = ("import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
         "open(" + repr(str(tmp / "pids")) + ", 'w').write(str(g.pid)); time.sleep(300)")

class Runner:  # what run_steps needs of the pipeline's Runner
    current = "stage1"
    def run(self, start_from=None):
        execute(Command([sys.executable, "-c", child], cwd=tmp, log_name="stage1"), tmp / "stage1.log")

terminate_like_ctrl_c()
sys.exit(run_steps(Runner()))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for its (killed) parent is dead too
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


def test_sigterm_stops_the_step_and_its_children_and_says_so_like_ctrl_c(tmp_path):
    import signal

    proc = subprocess.Popen([sys.executable, "-c", _RUN_UNDER_SIGTERM, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pids").exists() or not (tmp_path / "pids").read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    grandchild = int((tmp_path / "pids").read_text())
    proc.send_signal(signal.SIGTERM)
    try:
        err = proc.communicate(timeout=30)[1]
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert err.strip().splitlines() == ["dreambooth3d run: interrupted during stage1; rerun the same command to resume"]
    time.sleep(0.5)
    try:
        assert not _alive(grandchild)
    finally:
        if _alive(grandchild):
            os.kill(grandchild, 9)


def test_loading_a_lora_checkpoint_draws_no_random_numbers(tiny_sd_path, tmp_path):
    """Why a used prompt-embedding cache changed the mesh: embedding the prompts loads base +
    checkpoint, whose LoRA adapters were initialised from the global RNG before their weights were
    loaded, so a cold cache shifted every later random number of the stage (its NeRF init, its
    sampling). Loading must not touch the global RNG."""
    from threestudio_dreambooth3d.core.sd_models import load_sd_components

    unet = load_sd_components(tiny_sd_path).unet
    checkpoints.lora.add_lora(unet, 2, 2, checkpoints.LORA_TARGETS["unet"])
    checkpoints.save_checkpoint(tmp_path / "partial", {"unet": (unet, False)}, {"name": "partial"})
    torch.manual_seed(123)
    before = torch.random.get_rng_state().clone()
    comps = load_sd_components(tiny_sd_path, checkpoint=tmp_path / "partial", merge_lora=False)
    assert checkpoints.lora.lora_shape(comps.unet) is not None  # adapters were added
    assert torch.equal(torch.random.get_rng_state(), before)


def test_the_embedding_cache_key_follows_the_text_encoders_content(tmp_path):
    from threestudio_dreambooth3d.core.sd_models import text_encoder_key

    model = tmp_path / "sd"
    for sub in ("text_encoder", "tokenizer", "unet"):
        (model / sub).mkdir(parents=True)
    (model / "text_encoder" / "model.safetensors").write_bytes(b"a" * 10)
    (model / "tokenizer" / "vocab.json").write_text("{}")
    key = text_encoder_key(model)
    assert text_encoder_key(model) == key
    (model / "unet" / "model.safetensors").write_bytes(b"u")  # not what embeddings depend on
    assert text_encoder_key(model) == key
    (model / "text_encoder" / "model.safetensors").write_bytes(b"b" * 11)  # the folder rebuilt in place
    assert text_encoder_key(model) != key
    key = text_encoder_key(model)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "dreambooth.json").write_text(json.dumps({"weights": {"unet": [{"kind": "lora", "file": "unet.safetensors"}]}}))
    assert text_encoder_key(model, ckpt) == key  # a checkpoint that kept the base text encoder
    (ckpt / "text_encoder.safetensors").write_bytes(b"t")
    (ckpt / "dreambooth.json").write_text(json.dumps({"weights": {"text_encoder": [{"kind": "full",
                                                                                     "file": "text_encoder.safetensors"}]}}))
    assert text_encoder_key(model, ckpt) != key


def test_the_disk_estimate_leaves_a_bad_finetune_option_to_the_runs_own_check():
    from threestudio_dreambooth3d.environment import doctor

    need, _ = doctor.run_disk_need("default", "stabilityai/stable-diffusion-2-1-base", ["--no-such-flag=1"],
                                   cached=lambda m: None)
    assert need == doctor.run_disk_need("default", "stabilityai/stable-diffusion-2-1-base", [], cached=lambda m: None)[0]


def test_a_step_command_dies_with_a_killed_run(tmp_path):
    """kill -9 of `run` releases the folder's lock: its step's command must not write on."""
    import signal

    code = ("import sys\nfrom pathlib import Path\nfrom threestudio_dreambooth3d.pipeline.commands import Command\n"
            "from threestudio_dreambooth3d.pipeline.runner import execute\ntmp = Path(sys.argv[1])\n"
            "child = 'import os, time; open(' + repr(str(tmp / 'pid')) + ', \"w\").write(str(os.getpid())); time.sleep(300)'\n"
            "execute(Command([sys.executable, '-c', child], cwd=tmp, log_name='stage1'), tmp / 'stage1.log')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    child = int((tmp_path / "pid").read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, 9)
