"""The ``dreambooth3d`` command's error handling and logging: our errors are one line (exit 2),
anything else keeps its traceback (one line with --quiet), --debug shows ours too, a broken
subcommand module is not hidden, and logging is configured once for the package."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from threestudio_dreambooth3d import cli
from threestudio_dreambooth3d.errors import ConfigError


@pytest.fixture
def failing_doctor(monkeypatch):
    """``dreambooth3d doctor`` raising what the test sets."""
    from threestudio_dreambooth3d.cli import doctor

    box = {}

    def run(args):
        raise box["error"]

    monkeypatch.setattr(doctor, "run", run)
    return box


def test_our_error_is_one_line_with_exit_2(failing_doctor, capsys):
    failing_doctor["error"] = ConfigError("bad --set; write STEP:KEY=VALUE")
    assert cli.main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert err == "dreambooth3d doctor: error: bad --set; write STEP:KEY=VALUE\n"


def test_debug_shows_the_traceback_of_our_errors(failing_doctor):
    failing_doctor["error"] = ConfigError("bad")
    with pytest.raises(ConfigError):
        cli.main(["--debug", "doctor"])
    with pytest.raises(ConfigError):
        cli.main(["doctor", "--debug"])  # after the subcommand too


def test_anything_else_keeps_its_traceback_unless_quiet(failing_doctor, capsys):
    failing_doctor["error"] = RuntimeError("CUDA out of memory")  # not ours: not a one-liner
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        cli.main(["doctor"])
    assert cli.main(["-q", "doctor"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: CUDA out of memory" in err and "Traceback" not in err


def test_a_broken_subcommand_module_is_not_hidden(monkeypatch):
    monkeypatch.setitem(cli.SUBCOMMANDS, "broken", "threestudio_dreambooth3d.cli.no_such_module")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        cli.build_parser()


def _log_lines(verbosity: int) -> str:
    code = textwrap.dedent(f"""
        import logging
        from threestudio_dreambooth3d.cli import configure_logging
        configure_logging({verbosity})
        configure_logging({verbosity})  # idempotent: one handler
        logging.getLogger("threestudio_dreambooth3d.core.dreambooth").info("ours-info")
        logging.getLogger("threestudio_dreambooth3d.core.dreambooth").debug("ours-debug")
        logging.getLogger("threestudio_dreambooth3d.core.dreambooth").warning("ours-warning")
        logging.getLogger("diffusers.models").info("theirs-info")
        logging.getLogger("diffusers.models").warning("theirs-warning")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stderr


def test_logging_ours_at_info_theirs_at_warning():
    default, verbose, quiet = _log_lines(0), _log_lines(1), _log_lines(-1)
    assert default.count("ours-info") == 1 and "ours-debug" not in default  # one handler, INFO
    assert "theirs-info" not in default and "theirs-warning" in default
    assert "ours-debug" in verbose and "theirs-info" not in verbose
    assert "ours-info" not in quiet and "ours-warning" in quiet
