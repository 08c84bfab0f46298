"""User-facing errors.

Every error a user can cause (bad flag, missing file, malformed dataset, hostile pickle)
is raised as a :class:`SigrlError` subclass with a one-line message that names the input
and what to do. The CLI prints ``sigrl: error: <message>`` and exits with ``exit_code``;
it prints a traceback only with ``--debug``.

Exit codes (documented in README):
    0  everything done
    1  done, but some inputs were skipped (bad images, problems in a dataset)
    2  nothing done: usage error, unusable input
"""
from __future__ import annotations


class SigrlError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is one line."""

    exit_code = 2


class UsageError(SigrlError):
    """Bad command line or API arguments (no labels, unknown model, bad option)."""


class DataError(SigrlError):
    """A dataset, label file or image list is missing or malformed."""


class ConfigError(SigrlError):
    """A run config has an unknown key, a wrong type or an impossible value."""


class UnsafeFileError(SigrlError):
    """A file asked to execute code (pickle globals) or to escape its root."""


class CheckpointError(SigrlError):
    """A checkpoint does not exist, is corrupt, or does not match the backbone/run."""
