"""threestudio without a manual step: the tested commit fetched with git into the cache folder.

When no threestudio is given (``--threestudio``, ``$THREESTUDIO_ROOT``) and none is importable,
``dreambooth3d run`` (and ``doctor --fix``) use ``CACHE/threestudio-<commit>``, fetching it
first if it is not there: one shallow ``git fetch`` of that commit, checked out into a
temporary folder and renamed into place only when complete, so an interrupted fetch leaves
nothing half-made. ``$DREAMBOOTH3D_THREESTUDIO_URL`` replaces the URL (a mirror; the tests use
a local bare repository) and ``$DREAMBOOTH3D_THREESTUDIO_COMMIT`` the commit. git never asks
for credentials and gives up on a stalled connection, so no network fails in seconds.
Torch-free.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional, Union

from ..errors import ThreestudioNotFoundError
from .threestudio_root import locate_threestudio

THREESTUDIO_URL = "https://github.com/threestudio-project/threestudio"
TESTED_THREESTUDIO_COMMIT = "28d9d80d9d00f308244adfcf3be8b17ca0cb6465"  # threestudio 0.2.3
URL_ENV = "DREAMBOOTH3D_THREESTUDIO_URL"
COMMIT_ENV = "DREAMBOOTH3D_THREESTUDIO_COMMIT"
GIT_TIMEOUT_S = 600  # the whole fetch; a stalled transfer stops sooner (http.lowSpeed*)
_DONE = ".dreambooth3d-fetched"  # written last: its presence marks a complete checkout


def threestudio_source() -> tuple:
    """(URL, commit) to fetch: the environment's overrides, else threestudio's repository at the tested commit."""
    return os.environ.get(URL_ENV) or THREESTUDIO_URL, os.environ.get(COMMIT_ENV) or TESTED_THREESTUDIO_COMMIT


def cached_threestudio(commit: Optional[str] = None) -> Path:
    """Where the fetched checkout of ``commit`` lives (whether or not it is there yet)."""
    from ..defaults import cache_dir

    commit = commit or threestudio_source()[1]
    return cache_dir() / f"threestudio-{commit[:12].replace('/', '-')}"


def is_fetched(folder: Path) -> bool:
    return (folder / _DONE).is_file() and (folder / "launch.py").is_file()


def _git(args, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="echo", GIT_LFS_SKIP_SMUDGE="1")
    cmd = ["git", "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=20", "-c", "advice.detachedHead=false",
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)


def _fetch_failed(url: str, commit: str, why: str) -> ThreestudioNotFoundError:
    return ThreestudioNotFoundError(
        f"threestudio is not installed and fetching it failed: git could not get commit {commit[:12]} from {url} "
        f"({why}). Without network: set {URL_ENV} to a reachable mirror of threestudio, or THREESTUDIO_ROOT to a "
        f"threestudio checkout (git clone {THREESTUDIO_URL}; git checkout {TESTED_THREESTUDIO_COMMIT[:7]})."
    )


def fetch_threestudio(url: Optional[str] = None, commit: Optional[str] = None,
                      say: Callable[[str], None] = print) -> Path:
    """The cached checkout of ``commit`` from ``url`` (defaults: :func:`threestudio_source`), fetched
    first when missing; raises :class:`ThreestudioNotFoundError` naming the overrides when git fails."""
    default_url, default_commit = threestudio_source()
    url, commit = url or default_url, commit or default_commit
    dest = cached_threestudio(commit)
    if is_fetched(dest):
        return dest
    if shutil.which("git") is None:
        raise _fetch_failed(url, commit, "git is not installed")
    say(f"threestudio not found: fetching commit {commit[:7]} from {url} into {dest} (once; reused afterwards; "
        "THREESTUDIO_ROOT=PATH uses your own checkout)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.fetching-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for args in (["init", "-q"], ["fetch", "-q", "--depth", "1", url, commit], ["checkout", "-q", "FETCH_HEAD"]):
            try:
                proc = _git(args, cwd=tmp)
            except subprocess.TimeoutExpired:
                raise _fetch_failed(url, commit, f"no answer within {GIT_TIMEOUT_S} s") from None
            if proc.returncode != 0:
                lines = [l.strip() for l in (proc.stderr or proc.stdout).splitlines() if l.strip()]
                fatal = [l for l in lines if l.startswith(("fatal:", "error:"))]  # git's reason, not its advice
                raise _fetch_failed(url, commit, (fatal or lines or [f"git {args[0]} exit {proc.returncode}"])[0])
        if not (tmp / "launch.py").is_file() or not (tmp / "threestudio" / "__init__.py").is_file():
            raise _fetch_failed(url, commit, "the commit has no launch.py and threestudio/__init__.py: not threestudio")
        (tmp / _DONE).write_text(f"{url}\n{commit}\n")
        try:
            tmp.rename(dest)
        except OSError:
            if not is_fetched(dest):  # another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"threestudio {commit[:7]} ready in {dest}")
    return dest


def ensure_threestudio(explicit: Optional[Union[str, Path]] = None, fetch: bool = True,
                       say: Callable[[str], None] = print) -> Path:
    """The threestudio root :func:`locate_threestudio` finds; when nothing is given or importable, the
    cached checkout, fetched first (``fetch=False``: the error instead, e.g. for a dry run)."""
    try:
        return locate_threestudio(explicit)
    except ThreestudioNotFoundError:
        if explicit or os.environ.get("THREESTUDIO_ROOT"):
            raise  # a wrong path given is an error, never silently replaced
        import importlib.util

        if importlib.util.find_spec("threestudio") is not None:
            raise  # an installed threestudio without launch.py: the error says so
        cached = cached_threestudio()
        if is_fetched(cached):
            return cached
        if not fetch:
            raise
        return fetch_threestudio(say=say)
