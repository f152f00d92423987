"""How the package writes and reads small things: folder names from prompts, the subject's
identifier in a prompt, file-name order, timestamps and durations. Torch-free."""
from __future__ import annotations

import hashlib
import re
import time


def slug(text: str, max_len: int = 60) -> str:
    """A folder name for a prompt or a class noun; long ones keep a hash so two never collide."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"
    if len(s) > max_len:
        s = s[: max_len - 9].rstrip("-") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return s


def identifier_pattern(identifier: str) -> str:
    """The regex of ``identifier`` as a word of a prompt ("sks" in "a sks dog", not in "asks")."""
    return rf"(?<!\w){re.escape(identifier)}(?!\w)"


def has_identifier(prompt: str, identifier: str) -> bool:
    return re.search(identifier_pattern(identifier), prompt) is not None


def remove_identifier(prompt: str, identifier: str) -> str:
    """The prompt without the identifier word ('a sks dog' -> 'a dog'), spaces tidied."""
    if not identifier:
        return " ".join(prompt.split())
    return " ".join(re.sub(identifier_pattern(identifier), " ", prompt).split())


def natural_key(text: str) -> list:
    """Sort key putting "frame_2" before "frame_10" (digit runs compare as numbers)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def now_iso() -> str:
    """The local time with its UTC offset, as manifests and sweep records store it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``1h02m03s``."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
