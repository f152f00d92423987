"""threestudio without a manual step: with none given or installed, ``run`` and ``doctor --fix``
git-fetch the tested commit into the cache folder once and reuse it; the URL (and commit) are
overridable, and an unreachable URL fails before any work, naming the variables to set."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from threestudio_dreambooth3d.environment import fetch
from threestudio_dreambooth3d.errors import ThreestudioNotFoundError

pytestmark = pytest.mark.skipif(subprocess.run(["git", "--version"], capture_output=True).returncode != 0,
                                reason="git is not installed")


def _git(*args, cwd=None) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A bare repository holding a tiny threestudio-shaped commit (launch.py, threestudio/__init__.py);
    the environment points the fetch at it, with a cache folder of the test's own."""
    work = tmp_path / "src"
    (work / "threestudio").mkdir(parents=True)
    (work / "launch.py").write_text("print('launch')\n")
    (work / "threestudio" / "__init__.py").write_text('__version__ = "0.2.3"\n')
    _git("init", "-q", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "threestudio", cwd=work)
    commit = _git("rev-parse", "HEAD", cwd=work)
    (work / "launch.py").write_text("print('a later commit')\n")
    _git("commit", "-q", "-am", "later", cwd=work)  # the pinned commit is not the branch's head
    bare = tmp_path / "threestudio.git"
    _git("clone", "-q", "--bare", str(work), str(bare))
    _git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)  # as GitHub allows: fetch by commit
    monkeypatch.setenv(fetch.URL_ENV, bare.as_uri())
    monkeypatch.setenv(fetch.COMMIT_ENV, commit)
    monkeypatch.setenv("DREAMBOOTH3D_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("THREESTUDIO_ROOT", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", _without_threestudio(__import__("importlib.util").util.find_spec))
    return commit


def _without_threestudio(find_spec):
    return lambda name, *a, **k: None if name == "threestudio" else find_spec(name, *a, **k)


def test_fetches_the_pinned_commit_once_and_reuses_it(mirror, tmp_path, capsys, monkeypatch):
    root = fetch.ensure_threestudio()
    assert root == tmp_path / "cache" / f"threestudio-{mirror[:12]}"
    assert (root / "launch.py").read_text() == "print('launch')\n"  # the pinned commit, not the head
    out = capsys.readouterr().out
    assert f"fetching commit {mirror[:7]} from {(tmp_path / 'threestudio.git').as_uri()}" in out and str(root) in out
    assert not [p for p in (tmp_path / "cache").iterdir() if p != root]  # no temporary folder left
    monkeypatch.setattr(fetch, "_git", lambda *a, **k: pytest.fail("fetched again"))
    assert fetch.ensure_threestudio() == root
    assert capsys.readouterr().out == ""


def test_a_dead_url_fails_naming_the_variables_and_leaves_nothing(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(fetch.URL_ENV, (tmp_path / "no-such-mirror.git").as_uri())
    with pytest.raises(ThreestudioNotFoundError) as e:
        fetch.ensure_threestudio(say=lambda m: None)
    assert fetch.URL_ENV in str(e.value) and "THREESTUDIO_ROOT" in str(e.value)
    assert "no-such-mirror.git" in str(e.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_given_threestudio_is_never_replaced_by_a_fetch(mirror, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "_git", lambda *a, **k: pytest.fail("fetched"))
    monkeypatch.setenv("THREESTUDIO_ROOT", str(tmp_path / "wrong"))
    with pytest.raises(ThreestudioNotFoundError, match="THREESTUDIO_ROOT=.*wrong is not a threestudio checkout"):
        fetch.ensure_threestudio()
    monkeypatch.delenv("THREESTUDIO_ROOT")
    with pytest.raises(ThreestudioNotFoundError, match="--threestudio="):
        fetch.ensure_threestudio(tmp_path / "wrong")
    with pytest.raises(ThreestudioNotFoundError):  # a dry run fetches nothing
        fetch.ensure_threestudio(fetch=False)


def test_run_with_a_dead_url_fails_before_any_work(mirror, tmp_path, monkeypatch, capsys, subject_dir):
    from threestudio_dreambooth3d.cli import main

    monkeypatch.setenv(fetch.URL_ENV, "file:///nonexistent/threestudio.git")
    out = tmp_path / "out"
    code = main(["run", "--preset", "smoke", "--subject", str(subject_dir), "--class-noun", "dog",
                 "--prompt", "a sks dog", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and fetch.URL_ENV in err and "THREESTUDIO_ROOT" in err
    assert not (out / "finetune").exists() and not (out / "manifest.json").exists()


def test_doctor_fix_fetches_threestudio(mirror, tmp_path, capsys):
    from threestudio_dreambooth3d.cli import main
    from threestudio_dreambooth3d.environment.doctor import check_threestudio

    assert check_threestudio()[0].fix.startswith("dreambooth3d doctor --fix")
    main(["doctor", "--fix", "--preset", "smoke", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    root = tmp_path / "cache" / f"threestudio-{mirror[:12]}"
    assert "fetching commit" in out and (root / "launch.py").is_file()
    rows = {r.name: r for r in check_threestudio()}
    assert rows["threestudio"].status == "ok" and str(root) in rows["threestudio"].detail
