"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

An interrupted stage leaves the previous output intact, never a half-written one: a reader sees
the old file or the new one, whole (a killed writer leaves only its ``.<name>.*.tmp`` file, which
the next write to that path removes).

A URI target (``s3://...``, see ``pipelines.storage``) is written to a local temporary
file and uploaded once complete: an object store shows an object only when its upload has
finished, so readers there too see the old object or the new one, whole.

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

from pipelines import storage
from pipelines.faults import hooks


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    if storage.is_uri(path):
        local = storage.local_path(os.fspath(path))
        if local is None:
            with _uploaded(storage.StorageUri(os.fspath(path))) as tmp:
                yield tmp
            return
        path = local
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


@contextlib.contextmanager
def _uploaded(target: storage.StorageUri) -> Iterator[Path]:
    """Yield a local temporary file; once it is complete, upload it to ``target`` in one piece
    (an object appears only when its upload completes: atomic without a rename)."""
    storage.check_location(target)  # before the work of writing it
    with tempfile.TemporaryDirectory(prefix="lzr-upload-") as folder:
        tmp = Path(folder) / target.name
        yield tmp
        for hook in hooks.BEFORE_REPLACE:
            hook(target)  # a StorageUri: its .name, like a Path's
        storage.upload(tmp, target)


def write_atomic(
    path: str | os.PathLike[str], write: Callable[[Path], object]
) -> Path | storage.StorageUri:
    with atomic_path(path) as tmp:
        write(tmp)
    return storage.StorageUri(os.fspath(path)) if storage.is_uri(path) else Path(path)


def write_json(path: str | os.PathLike[str], data: Any) -> Path | storage.StorageUri:
    return write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, default=float)))


def write_csv(
    path: str | os.PathLike[str], rows: list[dict[str, Any]], columns: Sequence[str]
) -> Path | storage.StorageUri:
    """``rows`` as CSV with exactly ``columns`` (other keys are left out): DVC's plot format."""

    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return write_atomic(path, write)
