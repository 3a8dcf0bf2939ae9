"""User-facing errors: one clear line naming the problem and the fix, exit status 2.

Stage entry points run through ``cli``, which turns these (and only these) into a message on
stderr; anything else is a bug and keeps its traceback. ``cli`` is also where a stage or command
process installs the fault hooks ``LINEARIZER_FAULT`` asks for (``fault_injection.install``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipelines.common import fault_injection


class LinearizerError(Exception):
    """A problem the user can fix: bad params, missing or corrupt data, unreachable services."""


class ConfigError(LinearizerError):
    """A bad key, type or value in ``params.yaml`` or on the command line."""


class DataError(LinearizerError):
    """A data file that is missing, unreadable, corrupt or of the wrong shape."""


class ServiceError(LinearizerError):
    """Ray or MLflow cannot be reached or cannot do what is asked."""


def cli(main: Callable[[list[str] | None], object]) -> Callable[[list[str] | None], None]:
    """Wrap a stage's ``main(argv)``: user errors print ``error: ...`` and exit 2. The process
    entry point of every stage and command, so it also runs ``fault_injection.install()``."""

    def run(argv: list[str] | None = None) -> None:
        fault_injection.install()
        try:
            main(argv)
        except LinearizerError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return run
