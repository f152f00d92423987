"""The package's shape: no import cycles (lazy imports included), no threestudio on import of
the package or the core, a torch-free ``--help`` that lists every subcommand."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Optional, Set

import pytest

import threestudio_dreambooth3d
from threestudio_dreambooth3d.cli import SUBCOMMANDS

PACKAGE = "threestudio_dreambooth3d"
ROOT = Path(threestudio_dreambooth3d.__file__).resolve().parent


def _module_name(path: Path, root: Path = ROOT, package: str = PACKAGE) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [package, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> Optional[str]:
    if node.level == 0:
        return node.module
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports_by_name(tree: ast.AST) -> bool:
    """Whether the module imports modules named by strings (importlib.import_module, __import__)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in ("import_module", "__import__"):
                return True
    return False


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Dict[str, Set[str]]:
    """module -> the package modules it imports anywhere (top level or inside functions), and in a
    module that imports by name (importlib.import_module), every string literal naming one of them
    (cli's SUBCOMMANDS table)."""
    modules = {_module_name(p, root, package): p for p in root.rglob("*.py")}
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        by_name = _imports_by_name(tree)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node)
                if base is None:
                    continue
                # "from . import x" names a submodule x when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif by_name and isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                targets = [node.value]
            for t in targets:
                if not t.startswith(package):
                    continue
                while t not in modules and "." in t:  # an attribute of a module: the module
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[list]:
    """One import cycle as a list of modules, or None. Importing a submodule runs its
    package's __init__ first, but an __init__ that imports nothing from its children adds
    no edge, so package -> child edges come only from real imports."""
    state: Dict[str, int] = {}
    stack: list = []

    def visit(m: str) -> Optional[list]:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_import_graph_sees_lazy_and_relative_imports():
    g = import_graph()
    # a lazy, relative import inside a function (cli.run imports the runner when it runs)
    assert f"{PACKAGE}.pipeline.runner" in g[f"{PACKAGE}.cli.run"]
    # two dots, module level
    assert f"{PACKAGE}.errors" in g[f"{PACKAGE}.core.subject"]
    # by name: cli imports its subcommands with importlib.import_module(SUBCOMMANDS[...])
    assert set(SUBCOMMANDS.values()) <= g[f"{PACKAGE}.cli"]


def test_a_cycle_through_a_module_imported_by_name_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text(
        "import importlib\nCOMMANDS = {'run': 'pkg.cli.run'}\n"
        "def main(name):\n    return importlib.import_module(COMMANDS[name])\n")
    (pkg / "cli" / "run.py").write_text("def run():\n    from ..steps import x\n")
    # a subprocess command line names the package without importing it: not an edge
    (pkg / "steps.py").write_text("import sys\nARGV = [sys.executable, '-m', 'pkg.cli']\nx = 1\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None
    (pkg / "steps.py").write_text("def x():\n    from .cli import main\n")
    assert find_cycle(import_graph(pkg, "pkg")) == ["pkg.cli", "pkg.cli.run", "pkg.steps", "pkg.cli"]


def test_find_cycle_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_lazy_or_not():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _run(code: str, *args: str, env_path: Optional[Path] = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(env_path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_importing_the_package_and_the_core_never_imports_threestudio(tmp_path):
    # a threestudio that fails loudly when imported: the check means something without threestudio too
    fake = tmp_path / "threestudio"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('threestudio was imported')\n")
    core = sorted(p.stem for p in (ROOT / "core").glob("*.py") if p.stem != "__init__")
    assert {"subject", "dreambooth", "checkpoints", "sds"} <= set(core)
    r = _run(f"""
        import importlib, sys
        import {PACKAGE}
        for name in {core!r}:
            importlib.import_module("{PACKAGE}.core." + name)
        for name in ("errors", "fs", "defaults", "environment.threestudio_root", "registration"):
            importlib.import_module("{PACKAGE}." + name)
        assert "threestudio" not in sys.modules, "threestudio imported"
        print("ok")
    """, env_path=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_never_imports_torch(command):
    argv = ["--help"] if command is None else [command, "--help"]
    r = _run(f"""
        import sys
        from {PACKAGE}.cli import main
        try:
            main({argv!r})
        except SystemExit as e:
            assert e.code == 0, e.code
        heavy = sorted(m for m in ("torch", "diffusers", "transformers", "threestudio", "PIL") if m in sys.modules)
        assert not heavy, heavy
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    if command is None:
        for name in SUBCOMMANDS:
            assert name in r.stdout, (name, r.stdout)
    else:
        assert f"dreambooth3d {command}" in r.stdout


def test_test_modules_have_unique_basenames():
    """pytest imports test files by basename (no __init__.py): a second tests/**/test_x.py is a
    collection error of the whole run, not of that file."""
    tests = Path(__file__).resolve().parent
    names = [p.name for p in tests.rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
