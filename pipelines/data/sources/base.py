"""What every source is: a data set read as a stream of chunks, never whole.

A source knows its sample count, the shape of one sample and its grey levels (``bins``) before
it reads any pixel, so that ``prepare`` can open the Parquet writers and assign every sample to
a split first, then stream the chunks through. Discrete data (8-bit images) are dequantised
here, with noise that is a pure function of ``(seed, row)``: the same seed gives the same
values whatever the chunk size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipelines.data.levels import dequantise as dequantise  # the sources' and tests' name
from pipelines.data.levels import noise_block_rows as noise_block_rows
from pipelines.errors import DataError

Chunk = tuple[np.ndarray, np.ndarray]
"""``(x (n, *shape) float32, labels (n,) int64)``; a label of -1 means unlabelled"""


def unlabelled(n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int64)


class Source(ABC):
    """A data set read as chunks of at most ``rows`` samples, in a fixed order.

    ``name`` is what the metadata and ``stats.json`` call it, ``bins`` the grey levels of the
    dequantised data (0: continuous), ``note`` a line for the user (unlabelled data...)."""

    name: str
    shape: tuple[int, ...]
    count: int
    bins: int = 0
    note: str = ""

    @abstractmethod
    def chunks(self, rows: int) -> Iterator[Chunk]:
        """Every sample once, in order, ``rows`` or fewer at a time."""


class DiscreteSource(Source):
    """A source of 8-bit levels (IDX, CIFAR, image folders, uint8 arrays), dequantised with
    ``bins=256`` as they are read."""

    bins = 256

    def __init__(self, seed: int) -> None:
        self.seed = seed

    @abstractmethod
    def levels(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(levels (n, *shape) uint8, labels (n,) int64)`` chunks of at most ``rows``."""

    def chunks(self, rows: int) -> Iterator[Chunk]:
        start = 0
        for levels, labels in self.levels(rows):
            yield dequantise(levels, start, self.bins, self.seed), labels
            start += len(levels)
        if start != self.count:
            raise DataError(f"{self.name}: read {start} samples, expected {self.count}")


@dataclass(frozen=True)
class Dataset:
    """A data set held in memory: small data (toys, digits, tests and benchmarks)."""

    x: np.ndarray  # (N, *shape) float32
    labels: np.ndarray  # (N,) int64, -1 when unlabelled
    source: str
    bins: int = 0
    """grey levels of the discrete data before uniform dequantisation (0: continuous data), so
    that bits/dim is stated per bin like published MNIST/CIFAR figures"""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


class MemorySource(Source):
    """A ``Dataset`` already in memory, read as a source (toys, digits)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.name, self.shape, self.count, self.bins = ds.source, ds.shape, len(ds.x), ds.bins

    def chunks(self, rows: int) -> Iterator[Chunk]:
        for i in range(0, self.count, rows):
            yield self.ds.x[i : i + rows], self.ds.labels[i : i + rows]
