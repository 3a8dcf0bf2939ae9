"""Fault injection for the reliability tests and benchmarks: hooks on two explicit seams,
installed only where ``LINEARIZER_FAULT`` asks for them.

``LINEARIZER_FAULT="<point>:<value>"`` makes the code fail once at that point (a marker file in
``LINEARIZER_FAULT_DIR`` remembers it fired, so a retry runs clean):

- ``epoch:<n>``: a training loop raises ``InjectedFault`` right after reporting epoch ``n`` (a
  crashed worker or trial; Ray's failure handling must restart it from the checkpoint). Seam:
  ``hooks.EPOCH_END``.
- ``write:<file name>``: an atomic write SIGKILLs its own process after writing the temporary
  file and before the rename (a stage killed mid-write). Seam:
  ``hooks.BEFORE_REPLACE``.

The code on those paths knows nothing of faults: ``install()`` registers the hook, and every
process entry point calls it once: the stage and command wrapper ``entry.cli``, the Ray Train
worker entry ``train_loop_per_worker`` and the sweep trial ``sweeps.trial.run_trial`` (workers
and trials are processes of their own). Unset, ``install()`` registers nothing.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.faults import hooks

POINTS = ("epoch", "write")

# (hook list, hook) pairs registered by the last install(), so that installing again (a Tune
# actor reused for another trial, a wrapped main called twice in one process) never doubles them
_installed: list[tuple[list[Any], Callable[..., None]]] = []


class InjectedFault(RuntimeError):
    """Raised where ``LINEARIZER_FAULT`` asked for a failure."""


def _spec() -> tuple[str, str] | None:
    spec = os.environ.get("LINEARIZER_FAULT")
    if not spec:
        return None
    point, sep, arg = spec.partition(":")
    if point not in POINTS or not sep or not arg:
        raise ValueError(
            f"LINEARIZER_FAULT={spec!r}: expected epoch:<n> or write:<file name>, or leave it unset"
        )
    return point, arg


def _fire(point: str, arg: str) -> None:
    """Fail at ``point`` unless this fault already fired once (its marker file exists)."""
    folder = Path(os.environ.get("LINEARIZER_FAULT_DIR") or tempfile.gettempdir())
    marker = folder / f"linearizer-fault-{point}-{arg}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    if point == "write":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {point} {arg} (LINEARIZER_FAULT={point}:{arg})")


def install() -> None:
    """Register the hook ``LINEARIZER_FAULT`` asks for (none if unset); idempotent.

    Reads the environment now: call it at a process entry point, before any work."""
    for seam, hook in _installed:
        if hook in seam:
            seam.remove(hook)
    _installed.clear()
    spec = _spec()
    if spec is None:
        return
    point, arg = spec
    if point == "write":

        def before_replace(target: Path) -> None:
            if target.name == arg:
                _fire(point, arg)

        hooks.BEFORE_REPLACE.append(before_replace)
        _installed.append((hooks.BEFORE_REPLACE, before_replace))
    else:

        def epoch_end(epoch: int) -> None:
            if str(epoch) == arg:
                _fire(point, arg)

        hooks.EPOCH_END.append(epoch_end)
        _installed.append((hooks.EPOCH_END, epoch_end))
