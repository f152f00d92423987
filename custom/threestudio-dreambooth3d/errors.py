"""Our domain errors: problems a user can fix (bad input, missing files, a mismatched run).

Every one derives from :class:`DreamBooth3DError`; the CLI prints those as one line and
shows anything else (a bug, CUDA out of memory) with its traceback. Each also derives from
the builtin it replaced (``ValueError``, ``FileNotFoundError``...), so callers that caught
the builtin keep working. Torch-free: the CLI imports this at start-up.
"""
from __future__ import annotations


class DreamBooth3DError(Exception):
    """Base class of the errors whose message tells the user what to fix."""


class ConfigError(DreamBooth3DError, ValueError):
    """An option or config value is invalid (unknown preset/step, bad --set, bad mode)."""


class SubjectImageError(DreamBooth3DError, ValueError):
    """A subject photo (or folder) the trainer cannot use; the message says which and why."""


class PseudoViewError(DreamBooth3DError, ValueError):
    """A pseudo-view set (or the data to write one) is malformed."""


class EvalInputError(DreamBooth3DError, ValueError):
    """Bad input to ``dreambooth3d eval``: the message names the file/flag and the fix."""


class MissingFileError(DreamBooth3DError, FileNotFoundError):
    """A file or folder the run needs is not there (configs, a pseudo-view set...)."""


class SweepInputError(DreamBooth3DError, ValueError):
    """A sweep's dataset, subject spec or prompt template is unusable; the message says how to fix it."""


class ModelNotFoundError(DreamBooth3DError, FileNotFoundError):
    """A model folder is missing or not in the expected format."""


class ModelLoadError(DreamBooth3DError, RuntimeError):
    """A model or its processor could not be loaded; the message says from where and how to fix it."""


class CheckpointNotFoundError(DreamBooth3DError, FileNotFoundError):
    """No DreamBooth checkpoint where a config or option points."""


class RunMismatchError(DreamBooth3DError, RuntimeError):
    """An output folder holds a run with different inputs (resume refused)."""


class ManifestError(DreamBooth3DError, ValueError):
    """``OUT/manifest.json`` is unreadable or of another format."""


class DiskFullError(DreamBooth3DError, RuntimeError):
    """Writing into the output folder failed because the disk is full."""


class ThreestudioNotFoundError(DreamBooth3DError, ImportError):
    """No usable threestudio checkout/installation (an ImportError: threestudio cannot be imported)."""


class MachineError(DreamBooth3DError, RuntimeError):
    """This machine cannot run the requested preset (no GPU, missing requirements)."""


class StepFailedError(DreamBooth3DError, RuntimeError):
    """A pipeline step's command failed; the message holds its last lines and log path."""


class MissingOutputError(DreamBooth3DError, RuntimeError):
    """A step finished without writing what it should have."""


class TrainingDivergedError(DreamBooth3DError, FloatingPointError):
    """A loss became NaN/inf during training."""


class FolderInUseError(DreamBooth3DError, RuntimeError):
    """Another live process holds the output folder's lock; the message names it."""


class MissingDependencyError(DreamBooth3DError, ImportError):
    """An optional package an option needs is not installed (the message names the pip command)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so both end a command the same way
    (children stopped, one line); the exit code is 143 instead of 130."""

    exit_code = 143


def interrupt_exit_code(e: KeyboardInterrupt) -> int:
    return getattr(e, "exit_code", 130)
