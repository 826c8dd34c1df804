"""Exception types of causalrec_jax: one family per kind of mistake a user can make."""

from __future__ import annotations


class CausalRecError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(CausalRecError, ValueError):
    """A config file, section, key or value is not what the schema expects."""


class DataFormatError(CausalRecError, ValueError):
    """A data file or table does not follow the format it was read as.

    The message names the file (and line, where there is one) and what was expected.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class SplitError(CausalRecError, ValueError):
    """A split cannot be made from the data as configured."""


class RunError(CausalRecError):
    """A run folder is missing, incomplete, or does not hold what was asked for."""


class DataChangedError(RunError):
    """The data a run names is no longer the data it was trained on (its fingerprint differs)."""


class CheckpointWarning(UserWarning):
    """A checkpoint that does not read back was set aside; the command line prints it as one
    line."""


class TrackingWarning(UserWarning):
    """A run's export to TensorBoard or MLflow failed after its folder was written; the command
    line prints it as one line, with the `causalrec track` command that exports it again."""


class DataWarning(UserWarning):
    """Data that reads, but looks wrong (e.g. one non-integer id in a file of integer ids);
    the command line prints it as one line."""
