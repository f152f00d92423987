"""Where log records and Python warnings go while a command works: third-party messages
(transformers, diffusers, Lightning, torch's warnings) to the step's log file, not the terminal.

The CLI's terminal handler filters with :func:`hide_captured`; :func:`warnings_to_log` holds
what a block raises and appends it to a log file; :func:`route_library_logs` makes
transformers and diffusers log through the root logger, where those handlers see them.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Iterator, List, Optional

PACKAGE_LOGGER = "threestudio_dreambooth3d"
_capturing = 0  # > 0 while warnings_to_log holds third-party messages for a log file


def is_third_party(record: logging.LogRecord) -> bool:
    return not record.name.startswith(PACKAGE_LOGGER)


def hide_captured(record: logging.LogRecord) -> bool:
    """Filter for the terminal's log handler: third-party records are not shown while captured."""
    return not (_capturing and is_third_party(record))


class _Collect(logging.Handler):
    def __init__(self, into: List[str]):
        super().__init__(logging.WARNING)
        self.into = into
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record) + "\n")  # ours too: the log is the whole story


@contextlib.contextmanager
def warnings_to_log(log_path: Optional[Path], show: bool = False) -> Iterator[List[str]]:
    """Python warnings and third-party log warnings (transformers, diffusers, Lightning...) raised
    inside the block go to ``log_path`` (appended), not the terminal.

    Yields the list of formatted messages. ``show`` (``-v``) leaves the terminal as it was.
    Messages are held in memory until the block ends, so a run that fails before it has an
    output folder creates nothing for them.
    """
    global _capturing
    caught: List[str] = []
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        caught.append(warnings.formatwarning(message, category, filename, lineno, line))
        if show:
            original(message, category, filename, lineno, file, line)

    route_library_logs()  # transformers/diffusers, if loaded, log around the root logger otherwise
    handler = _Collect(caught)
    warnings.showwarning = record
    logging.getLogger().addHandler(handler)
    _capturing += 0 if show else 1
    try:
        yield caught
    finally:
        _capturing -= 0 if show else 1
        logging.getLogger().removeHandler(handler)
        warnings.showwarning = original
        if caught and log_path is not None and Path(log_path).parent.is_dir():
            with open(log_path, "a") as f:
                f.writelines(caught)


def route_library_logs() -> None:
    """transformers and diffusers log through handlers of their own straight to stderr; send their
    records through the root logger instead, where the CLI's handlers decide what is shown."""
    for name in ("transformers", "diffusers"):
        if name not in sys.modules:
            continue
        try:
            lib_logging = __import__(f"{name}.utils.logging", fromlist=["logging"])
            lib_logging.disable_default_handler()
            lib_logging.enable_propagation()
        except (ImportError, AttributeError):  # an old release without these helpers: leave it be
            logging.getLogger(__name__).debug("could not route %s's logging", name)

