"""The process entry point of every stage and command: user errors become one line and exit 2.

``cli(main)`` turns a ``LinearizerError`` (and only that) into ``error: ...`` on stderr; anything
else is a bug and keeps its traceback. It is also where a stage or command process installs the
fault hooks ``LINEARIZER_FAULT`` asks for (``pipelines.faults.injection.install``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipelines.errors import LinearizerError
from pipelines.faults import injection


def cli(main: Callable[[list[str] | None], object]) -> Callable[[list[str] | None], None]:
    """Wrap a stage's ``main(argv)``: user errors print ``error: ...`` and exit 2."""

    def run(argv: list[str] | None = None) -> None:
        injection.install()
        try:
            main(argv)
        except LinearizerError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return run
