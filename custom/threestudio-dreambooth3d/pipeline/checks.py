"""Checks before anything slow starts: the photos, the prompt, the configs (the machine: ``doctor``)."""
from __future__ import annotations

import dataclasses
import errno
import re
import tempfile
from pathlib import Path
from typing import List, Optional, Union

from .context import RunContext
from ..errors import ConfigError, MissingFileError
from ..formats import has_identifier, identifier_pattern


def check_prompt(prompt: str, identifier: str, class_noun: str) -> Optional[str]:
    """A warning when the prompt does not name the subject the way DreamBooth learnt it."""
    if not has_identifier(prompt, identifier):
        return (
            f"the prompt {prompt!r} does not contain the identifier {identifier!r}. DreamBooth binds your "
            f"subject to '{identifier} {class_noun}', so without it every stage optimises a generic "
            f"{class_noun}, not yours. Use e.g. --prompt 'a {identifier} {class_noun} wearing a hat'."
        )
    if not re.search(identifier_pattern(identifier) + rf"\s+{re.escape(class_noun)}", prompt):
        return (
            f"the prompt {prompt!r} does not contain '{identifier} {class_noun}' (identifier then class noun), "
            "the phrase DreamBooth was trained on; the subject may come out weaker."
        )
    return None


def check_subject(folder: Path) -> List[str]:
    """Open every photo now (errors name the file and the fix); warnings for an unusual count."""
    from ..core.subject import MIN_SIDE, list_subject_images, load_image

    photos = list_subject_images(folder)
    for p in photos:
        load_image(p, resolution=MIN_SIDE)
    if not 3 <= len(photos) <= 6:
        return [f"{folder} holds {len(photos)} photos; DreamBooth3D is made for 3-6 casual photos of one subject."]
    return []


def check_configs(ctx: RunContext) -> None:
    from .steps import stage_configs

    missing = [c for c in stage_configs(ctx) if not c.is_file()]
    if missing:
        raise MissingFileError(f"threestudio config {missing[0]} not found (preset {ctx.preset.name}); "
                                "pass --configs DIR pointing at this project's configs/ folder.")


def check_output_folder(out: Union[str, Path], flag: str = "--out") -> None:
    """The output folder can be created and written: not a file, not on a read-only or
    unwritable disk. Writes (and removes) one empty file in it, or in the nearest folder above
    it that exists (nothing is created)."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out} is a file, not a folder; pass a folder (it is created if missing).")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {out}: {existing} is a file, not a folder; pass another {flag}.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        why = {errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOSPC: "the disk is full",
               errno.ENAMETOOLONG: "the name is too long"}.get(e.errno, e.strerror or str(e))
        raise ConfigError(f"cannot write in {flag} {out} ({why}); pass {flag} a folder on a writable disk "
                          "with free space.") from e


def check_finetune_options(ctx: RunContext) -> None:
    """Every finetune step's options (the preset's and ``--set finetune:...``) parse as
    ``dreambooth3d finetune`` will parse them, before any work."""
    from .steps import Finetune, steps_for
    from ..finetune_options import FinetuneOptions

    for step in steps_for(ctx.method):
        if isinstance(step, Finetune):
            try:
                opts = FinetuneOptions.parse(step.command(ctx).argv[4:])  # after "python -m ...cli finetune"
                # the trainer's own checks (checkpoint steps within --steps...); the pseudo views a
                # multi-view finetune reads do not exist yet
                dataclasses.replace(opts, extra_images=None).dreambooth_config()
            except ConfigError as e:
                user = " ".join(f"{step.name}:{o}" for o in ctx.overrides.get(step.name, []))
                raise ConfigError(f"{step.name} options{f' (--set {user})' if user else ''}: {e}") from None
