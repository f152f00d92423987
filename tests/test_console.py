"""The run's terminal: progress read from a command's own bars, its noise kept in the log, and on
failure the lines that say why (``pipeline/console.py``, ``runner.execute``)."""
from __future__ import annotations

import io
import sys
import textwrap

import pytest

from threestudio_dreambooth3d.pipeline import commands
from threestudio_dreambooth3d.pipeline.console import BarState, Console, StepBar, failure_lines, parse_bar, phase_name
from threestudio_dreambooth3d.pipeline.runner import StepFailedError, execute

# what the commands really print (taken from a smoke run's logs)
LIGHTNING = "Epoch 0:  50%|█████     | 1/2 [00:03<00:03,  0.31it/s, train/loss=1.23]"
LIGHTNING_UNKNOWN = "Training: |          | 0/? [00:00<?, ?it/s]"
VALIDATION = "Validation DataLoader 0: 100%|██████████| 1/1 [00:00<00:00,  2.01it/s]"
FINETUNE = "DreamBooth:  75%|███████▌  | 3/4 [00:00<00:00, 30.32it/s, instance_loss=1.06, loss=2.19]"
TESTING = "Testing DataLoader 0:  25%|██▌       | 1/4 [00:00<00:01,  2.24it/s]"
RICH = "\x1b[2KTesting ━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━━━ 3/16 0:00:03 • 0:00:11 1.15it/s"


def test_parse_bar_reads_tqdm_and_lightning_redraws():
    assert parse_bar(LIGHTNING) == BarState("Epoch 0", 1, 2)
    assert parse_bar(FINETUNE) == BarState("DreamBooth", 3, 4)
    assert parse_bar("\x1b[A" + TESTING) == BarState("Testing DataLoader 0", 1, 4)  # nested bars move the cursor
    assert parse_bar(LIGHTNING_UNKNOWN) == BarState("Training", 0, None)
    assert parse_bar(RICH) == BarState("Testing", 3, 16)
    assert parse_bar("Predicting ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 4/4 0:00:00 • 0:00:00 310.30it/s") == \
        BarState("Predicting", 4, 4)
    assert parse_bar("[INFO] 12/40 views done") is None
    assert parse_bar("│ 0 │ geometry │ ImplicitVolume │ 12.6 M │") is None


def test_phase_names_and_side_bars():
    assert phase_name("Epoch 3") == "training"
    assert phase_name("Testing DataLoader 0") == phase_name("Testing") == "rendering views"
    assert phase_name("Predicting") == "exporting"
    assert phase_name("class images") == "class images"
    for side in ("Validation DataLoader 0", "Sanity Checking DataLoader 0", "Loading weights", ""):
        assert phase_name(side) is None


def test_plain_progress_lines_at_phase_start_and_quarters_side_bars_ignored():
    out = io.StringIO()
    bar = StepBar(out, tty=False)
    redraws = [f"Epoch 0: {100 * i // 8}%|#| {i}/8 [00:00<00:00, 1it/s]" for i in range(9)]
    # Lightning draws the validation bar in between; it must not replace the training bar
    stream = "\r".join(redraws[:5]) + "\n" + VALIDATION + "\n\r" + "\r".join(redraws[5:]) + "\n"
    for i in range(0, len(stream), 7):  # output arrives in arbitrary chunks
        bar.feed(stream[i:i + 7])
    bar.feed("\r" + TESTING)
    bar.feed("\ntranslating views: 100%|#| 4/4 [00:00<00:00, 1it/s]\n")
    bar.feed("\r" + TESTING)  # Rich redraws its finished bar while the next phase runs: not a new phase
    assert out.getvalue().splitlines() == ["    training: 0/8", "    training: 2/8", "    training: 4/8",
                                           "    training: 6/8", "    training: 8/8", "    rendering views: 1/4",
                                           "    translating views: 4/4"]


def test_a_terminal_gets_one_live_bar_that_follows_the_command():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = StepBar(out)
    bar.feed("\r" + FINETUNE)
    assert bar._bar is not None and bar._bar.n == 3 and bar._bar.total == 4
    bar.feed("\r" + LIGHTNING)
    assert bar._bar.n == 1 and bar._bar.total == 2 and "training" in bar._bar.desc
    bar.close()
    assert "training" in out.getvalue()


TRACEBACK = textwrap.dedent('''\
    /ts/threestudio/utils/config.py:11: UserWarning: register_new_resolver() is deprecated
      OmegaConf.register_new_resolver(
    Epoch 0:  50%|#####     | 1/2 [00:01<00:01]
    Traceback (most recent call last):
      File "/ts/launch.py", line 301, in <module>
        main(args, extras)
      File "/ext/guidance.py", line 51, in resolve_checkpoint
        raise CheckpointNotFoundError(
        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
    CheckpointNotFoundError: No DreamBooth checkpoint at /x.
    Set system.guidance.checkpoint to a checkpoint folder.
    ''')


def test_failure_lines_name_the_exception_and_where_it_was_raised():
    assert failure_lines(TRACEBACK) == [
        '  File "/ext/guidance.py", line 51, in resolve_checkpoint',
        "    raise CheckpointNotFoundError(",
        "CheckpointNotFoundError: No DreamBooth checkpoint at /x.",
        "Set system.guidance.checkpoint to a checkpoint folder.",
    ]


def test_failure_lines_take_the_last_of_chained_tracebacks():
    chained = TRACEBACK + "\nDuring handling of the above exception, another exception occurred:\n\n" + textwrap.dedent('''\
        Traceback (most recent call last):
          File "/ts/launch.py", line 310, in <module>
            cleanup()
        RuntimeError: CUDA out of memory
        ''')
    assert failure_lines(chained) == ['  File "/ts/launch.py", line 310, in <module>', "    cleanup()",
                                      "RuntimeError: CUDA out of memory"]


def test_failure_lines_without_a_traceback_skip_warnings_and_bars():
    text = ("[INFO] Loaded Stable Diffusion!\n/x.py:3: FutureWarning: old\n  warnings.warn(\n"
            + LIGHTNING + "\rEpoch 0: 100%|#| 2/2 [00:01<00:00]\nKilled\n")
    assert failure_lines(text) == ["[INFO] Loaded Stable Diffusion!", "Killed"]


def _noisy_command(tmp_path, code=0):
    script = ("import sys, warnings\n"
              "warnings.warn('threestudio says something deprecated', UserWarning)\n"
              "for i in range(5):\n"
              "    sys.stdout.write(f'\\rEpoch 0: {i*25}%|#| {i}/4 [00:00<00:00, 1it/s]'); sys.stdout.flush()\n"
              "print()\nprint('model table and notices')\n"
              f"raise SystemExit({code})\n")
    return commands.Command([sys.executable, "-c", script], cwd=tmp_path, log_name="stage1")


def test_execute_keeps_a_commands_noise_in_its_log_and_shows_progress(tmp_path, capfd):
    log = tmp_path / "logs" / "stage1.log"
    execute(_noisy_command(tmp_path), log, Console(0))
    out, err = capfd.readouterr()
    assert "deprecated" not in out + err and "model table" not in out + err
    assert err.splitlines() == ["    training: 0/4", "    training: 1/4", "    training: 2/4", "    training: 3/4", "    training: 4/4"]
    logged = log.read_text()
    assert "threestudio says something deprecated" in logged and "model table and notices" in logged


def test_execute_verbose_streams_everything_and_quiet_shows_nothing(tmp_path, capfd):
    execute(_noisy_command(tmp_path), tmp_path / "v.log", Console(1))
    out, err = capfd.readouterr()
    assert "model table and notices" in out and "deprecated" in out
    execute(_noisy_command(tmp_path), tmp_path / "q.log", Console(-1))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_a_failed_command_reports_the_why_not_the_noise(tmp_path, capfd):
    with pytest.raises(StepFailedError) as e:
        execute(_noisy_command(tmp_path, code=5), tmp_path / "logs" / "stage1.log", Console(0))
    msg = str(e.value)
    assert "stage1 failed (exit code 5)" in msg and "model table and notices" in msg
    assert "deprecated" not in msg and "Epoch 0" not in msg
    assert f"Full log: {tmp_path / 'logs' / 'stage1.log'}" in msg


def test_console_quiet_hides_step_lines():
    out = io.StringIO()
    Console(-1, out=out).step("[1/7] finetune: ...")
    Console(0, out=out).step("[2/7] stage1: ...")
    assert out.getvalue() == "[2/7] stage1: ...\n"


def test_commands_are_told_to_draw_live_bars_unless_the_user_said_otherwise(tmp_path, capfd, monkeypatch):
    # Lightning's Rich bar (--test/--export) draws only its last frame into a pipe unless told
    # it writes to a terminal; the bar reader needs the frames
    script = ("import os, sys\n"
              "live = os.environ.get('TTY_COMPATIBLE') == '1'\n"
              "for i in range(1, 5) if live else [4]:\n"
              "    sys.stdout.write(f'\\rTesting ━━━━━━ {i}/4 0:00:01 • 0:00:00 1.0it/s')\n")
    cmd = commands.Command([sys.executable, "-c", script], cwd=tmp_path, log_name="stage2")
    execute(cmd, tmp_path / "a.log", Console(0))
    assert capfd.readouterr().err.splitlines() == [f"    rendering views: {i}/4" for i in range(1, 5)]
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    execute(cmd, tmp_path / "b.log", Console(0))
    assert capfd.readouterr().err.splitlines() == ["    rendering views: 4/4"]
