"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

An interrupted stage leaves the previous output intact, never a half-written one: a reader sees
the old file or the new one, whole (a killed writer leaves only its ``.<name>.*.tmp`` file, which
the next write to that path removes).

``hooks.BEFORE_REPLACE`` is the one seam for the fault tests (``fault_injection`` installs a hook
there that SIGKILLs the writer); nothing in this module knows about faults.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipelines.common import hooks


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed writer
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        for hook in hooks.BEFORE_REPLACE:
            hook(target)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, default=float)))


def write_csv(
    path: str | os.PathLike[str], rows: list[dict[str, Any]], columns: Sequence[str]
) -> Path:
    """``rows`` as CSV with exactly ``columns`` (other keys are left out): DVC's plot format."""

    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return write_atomic(path, write)
