"""What a user sees before anything runs: the install carries what `run` needs, the
threestudio tier explains itself when threestudio cannot load, and --help tells the truth."""
import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from threestudio_dreambooth3d.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _subcommand_parsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _option_help(formatted: str, option: str) -> str:
    """The help paragraph of ``option`` in formatted --help text."""
    lines = formatted.splitlines()
    def names(line: str) -> str:  # "-v, --verbose  more log output" -> "--verbose  more log output"
        text = line.strip()
        return text.split(", ", 1)[1] if text.startswith("-") and not text.startswith("--") and ", " in text else text

    # "--flag, --no-flag  help" (BooleanOptionalAction) names two options on one line
    start = next(i for i, line in enumerate(lines) if (names(line) + " ").startswith((option + " ", option + ", ")))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if line.startswith("  -"):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize("command", ["finetune", "run", "eval"])
def test_help_states_each_default_once_and_truly(command):
    """No '(default: None)', no inverted switch defaults ('--no-prior ... (default: True)'),
    no default given twice, and every real default is the one the help text names."""
    p = _subcommand_parsers()[command]
    text = p.format_help()
    for action in p._actions:
        if action.help in (None, argparse.SUPPRESS) or not action.option_strings or action.dest == "help":
            continue
        opt = next(o for o in action.option_strings if o.startswith("--"))
        h = _option_help(text, opt)
        assert h.count("(default") <= 1, f"{command} {opt}: default stated twice: {h}"
        for shown in ("(default: None)", "(default: True)", "(default: False)", "(default: [])"):
            assert shown not in h, f"{command} {opt}: {h}"
        default = action.default
        # SUPPRESS: a global flag's copy on the subcommand (-v/-q/--debug); the top-level parser holds its default
        if default is None or default == argparse.SUPPRESS or isinstance(default, bool) or default == []:
            continue
        for value in default if isinstance(default, (list, tuple)) else [default]:
            assert str(value) in h.replace("- ", "-"), f"{command} {opt}: default {value!r} not in its help: {h}"


@pytest.mark.slow
def test_an_installed_copy_carries_the_configs(tmp_path):
    """What `pip install .` or a wheel installs (setuptools' build_py output) holds every config,
    and the config locator of that copy finds them there, with no checkout around it."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "custom", "configs"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {}))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(site)], cwd=src, check=True,
                   capture_output=True)
    installed = site / "threestudio_dreambooth3d" / "configs"
    wanted = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))
    assert wanted and sorted(p.relative_to(installed).as_posix() for p in installed.rglob("*.yaml")) == wanted
    shutil.rmtree(src)  # no checkout next to the installed copy
    code = "from threestudio_dreambooth3d.pipeline.commands import locate_configs; print(locate_configs())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == installed


@pytest.mark.slow
def test_threestudio_tier_skips_with_the_fix_when_threestudio_cannot_load(tmp_path):
    """A threestudio checkout whose requirements are missing: the tier is skipped, with the
    import error and the pip command, instead of failing collection."""
    fake = tmp_path / "threestudio"
    (fake / "threestudio").mkdir(parents=True)
    (fake / "launch.py").write_text("")
    (fake / "threestudio" / "__init__.py").write_text("import no_such_requirement_xyz\n")
    env = {**os.environ, "THREESTUDIO_ROOT": str(fake)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          str(REPO / "tests" / "integration" / "test_registration_configs.py")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    # nothing passed, failed or errored
    assert re.search(r"^\d+ skipped(, \d+ warnings?)? in", out.stdout, re.M), out.stdout[-3000:]
    assert "cannot be imported" in out.stdout and 'pip install -e ".[threestudio]"' in out.stdout


def test_readme_first_block_is_install_test_run_and_ci_runs_exactly_its_first_two():
    from threestudio_dreambooth3d.environment.requirements import INSTALL_COMMAND

    readme = (REPO / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands[0] == INSTALL_COMMAND  # one command: the tests' and threestudio's requirements
    assert commands[1] == "python -m pytest -q"
    assert commands[2].startswith("dreambooth3d run --preset smoke ") and "THREESTUDIO_ROOT" not in commands[2]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == commands[:2]
