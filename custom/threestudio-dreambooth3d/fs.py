"""Files: atomic writes, disk-full errors, content fingerprints. The one place for each.

Atomic means a crash at any point leaves either the previous complete file/folder or the
new one, never a half-written one: write next to the target, then rename over it.
Torch-free (callers pass a ``write_fn``).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

from .errors import DiskFullError

PathLike = Union[str, Path]

__all__ = ["DiskFullError", "raise_if_disk_full", "disk_full_as_error", "atomic_write_dir", "atomic_write_file",
           "atomic_write_text", "sha256_files", "fingerprint", "content_fingerprint"]


def raise_if_disk_full(e: OSError, path: PathLike) -> None:
    """Turn ENOSPC into :class:`DiskFullError` naming ``path`` and the fix; other errors pass through."""
    if e.errno == errno.ENOSPC:
        raise DiskFullError(
            f"No space left on the disk while writing {path}. Free some space (or pass --out on "
            "a larger disk) and rerun the same command: finished steps are kept.",
        ) from e


@contextmanager
def disk_full_as_error(path: PathLike) -> Iterator[None]:
    """``with disk_full_as_error(p): write p`` -- a full disk raises :class:`DiskFullError`."""
    try:
        yield
    except OSError as e:
        raise_if_disk_full(e, path)
        raise


def _tmp_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}")


def atomic_write_dir(target: PathLike, write_fn: Callable[[Path], None]) -> Path:
    """Let ``write_fn(tmp_dir)`` fill a temporary folder, then swap it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _tmp_name(target, "tmp"), _tmp_name(target, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    with disk_full_as_error(target):
        tmp.mkdir()
        try:
            write_fn(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def atomic_write_file(path: PathLike, write_fn: Callable[[Path], None]) -> Path:
    """Let ``write_fn(tmp_path)`` write a temporary file, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, "tmp")
    try:
        with disk_full_as_error(path):
            write_fn(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` atomically and durably (fsync before the rename)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write_file(path, write)


def sha256_files(paths: Iterable[PathLike]) -> str:
    """sha256 over file names and bytes, in the given order (renaming a photo counts as a change)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """sha256 of a JSON-able object in canonical form (sorted keys; other objects by ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


FULL_HASH_BYTES = 64 << 20  # files up to this size are hashed whole
_SAMPLE = 1 << 20  # larger ones: size + this many bytes at the start, the end and 6 places between


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode() + b"\0")
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            for i in range(8):
                f.seek((size - _SAMPLE) * i // 7)
                h.update(f.read(_SAMPLE))
    return h.hexdigest()


def content_fingerprint(path: PathLike) -> str:
    """What a finished step's output was: a file's size and sha256 (above 64 MiB: its size and
    samples of its bytes, so a multi-GB checkpoint costs milliseconds and truncation, the common
    damage, always shows), a folder's relative file names with theirs. "missing" if it is gone."""
    path = Path(path)
    if path.is_file():
        return _file_digest(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + _file_digest(p).encode() + b"\0")
    return h.hexdigest()
