"""CIFAR-10 in its binary version (``cifar-10-batches-bin``): records of one label byte and
3x32x32 pixel bytes, channel-first. ``data.path`` is that folder (``data_batch_*.bin`` and
``test_batch.bin``, read in name order) or one ``.bin`` batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipelines.data.sources.base import DiscreteSource
from pipelines.errors import DataError

SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32


def batches_in(folder: Path) -> list[Path]:
    """The CIFAR-10 batches in ``folder`` (training batches, then the test batch)."""
    found = [*folder.glob("data_batch_*.bin"), *folder.glob("test_batch.bin")]
    return sorted(p for p in found if p.is_file())


class CifarSource(DiscreteSource):
    """CIFAR-10 binary batches as (3, 32, 32) images with their labels."""

    shape = SHAPE

    def __init__(self, path: Path, seed: int) -> None:
        super().__init__(seed)
        self.files = batches_in(path) if path.is_dir() else [path]
        if not self.files:
            raise DataError(f"no CIFAR-10 batches (data_batch_*.bin, test_batch.bin) in {path}")
        self.name = str(path)
        self.sizes = []
        for f in self.files:
            size = f.stat().st_size
            if size == 0 or size % RECORD:
                raise DataError(
                    f"{f} is not a CIFAR-10 binary batch: {size} bytes is not a multiple of "
                    f"{RECORD} (1 label byte + 3x32x32 pixels); download the binary version "
                    "(cifar-10-binary.tar.gz) again"
                )
            self.sizes.append(size // RECORD)
        self.count = sum(self.sizes)

    def levels(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for path, n in zip(self.files, self.sizes, strict=True):
            with open(path, "rb") as f:
                for i in range(0, n, rows):
                    k = min(rows, n - i)
                    raw = f.read(k * RECORD)
                    if len(raw) != k * RECORD:  # the file shrank while being read
                        raise DataError(f"{path} is truncated; download it again")
                    records = np.frombuffer(raw, np.uint8).reshape(k, RECORD)
                    yield records[:, 1:].reshape(k, *SHAPE), records[:, 0].astype(np.int64)
