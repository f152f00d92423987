"""One process per output folder: an OS file lock on ``FOLDER/.dreambooth3d.lock``.

The lock is ``flock`` through the ``filelock`` package: the kernel drops it when the holding
process ends, however it ends (kill -9 included), so a lock left by a dead process never
blocks. Beside it, ``.dreambooth3d.lock.json`` says who holds it (pid, host, command, since
when); a second ``run``/``finetune``/sweep cell on the folder reads it and stops at once
naming that process. The file may outlive its holder: only the lock itself counts.

A process started by the holder works under the holder's lock (a sweep cell locks its folder
and runs ``dreambooth3d run`` there): a busy folder whose holder is our parent process is ours.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import filelock

from ..errors import FolderInUseError
from ..formats import now_iso
from ..fs import atomic_write_text

LOCK_FILE = ".dreambooth3d.lock"
INFO_FILE = ".dreambooth3d.lock.json"


def holder(folder: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """What the lock's info file says about the process holding ``folder`` (None: unreadable)."""
    try:
        return json.loads((Path(folder) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def describe(info: Optional[Dict[str, Any]]) -> str:
    if not info:
        return "another process (it wrote no details)"
    return (f"process {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"(`{info.get('command')}`)")


@contextmanager
def folder_lock(folder: Union[str, Path], argv: Optional[Sequence[str]] = None) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; raises :class:`FolderInUseError` at once when another
    live process holds it (never waits)."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(folder / LOCK_FILE), thread_local=False, is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        info = holder(folder)
        if info is not None and info.get("pid") == os.getppid() and info.get("host") == socket.gethostname():
            yield  # our parent holds it for us
            return
        raise FolderInUseError(
            f"{folder} is in use by {describe(info)}. Wait for it to finish (or stop it), or pass another "
            "--out folder; a lock left by a process that died never blocks."
        ) from None
    try:
        command = shlex.join(argv if argv is not None else ["dreambooth3d", *sys.argv[1:]])
        atomic_write_text(folder / INFO_FILE, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": now_iso()}, indent=2))
        yield
    finally:
        (folder / INFO_FILE).unlink(missing_ok=True)
        lock.release()
        if created and {p.name for p in folder.iterdir()} <= {LOCK_FILE}:
            try:  # a run refused by its checks leaves no folder behind
                (folder / LOCK_FILE).unlink()
                folder.rmdir()
            except OSError:
                pass
