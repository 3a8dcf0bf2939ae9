"""User-facing errors: one clear line naming the problem and the fix, exit status 2.

Stage entry points run through ``pipelines.entry.cli``, which turns these (and only these) into
a message on stderr; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LinearizerError(Exception):
    """A problem the user can fix: bad params, missing or corrupt data, unreachable services."""


class ConfigError(LinearizerError):
    """A bad key, type or value in ``params.yaml`` or on the command line."""


class DataError(LinearizerError):
    """A data file that is missing, unreadable, corrupt or of the wrong shape."""


class ServiceError(LinearizerError):
    """Ray or MLflow cannot be reached or cannot do what is asked."""
