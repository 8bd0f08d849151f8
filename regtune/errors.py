"""One exception hierarchy for everything regtune reports to a user.

The CLI turns any :class:`RegtuneError` into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RegtuneError(Exception):
    """Base class: a problem the user can fix (bad input, bad config, bad file)."""


class ConfigError(RegtuneError):
    """A configuration key or value is unknown, missing or out of range."""


class DataError(RegtuneError):
    """A data folder, file or volume cannot be used as given."""


class CheckpointError(RegtuneError):
    """A checkpoint file is missing, unreadable or was written by something else."""


class StudyError(RegtuneError):
    """A study cannot be started or resumed as asked."""
