"""Fault injection for the reliability tests and benchmarks; inert unless asked for.

``LINEARIZER_FAULT="<point>:<value>"`` makes the code fail once at that point (a marker file in
``LINEARIZER_FAULT_DIR`` remembers it fired, so a retry runs clean):

- ``epoch:<n>``: a training loop raises right after reporting epoch ``n`` (a crashed worker or
  trial; Ray's failure handling must restart it from the checkpoint);
- ``write:<file name>``: an atomic write SIGKILLs its own process after writing the temporary
  file and before the rename (a stage killed mid-write).
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path


class InjectedFault(RuntimeError):
    """Raised where ``LINEARIZER_FAULT`` asked for a failure."""


def maybe_fail(point: str, value: object) -> None:
    spec = os.environ.get("LINEARIZER_FAULT")
    if not spec:
        return
    name, _, arg = spec.partition(":")
    if name != point or str(value) != arg:
        return
    folder = Path(os.environ.get("LINEARIZER_FAULT_DIR") or tempfile.gettempdir())
    marker = folder / f"linearizer-fault-{name}-{arg}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    if point == "write":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {point} {value} (LINEARIZER_FAULT={spec})")
