"""A Parquet file in the prepared-split format (one written by ``prepare``, or by the user in
the same format), read again as a source: its values are final, its ``bins`` kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipelines.data.parquet import iter_rows, split_info
from pipelines.data.sources.base import Chunk, Source


class ParquetSource(Source):
    def __init__(self, path: Path) -> None:
        meta = split_info(path)
        self.path, self.name = path, str(path)
        self.shape, self.count = tuple(meta["shape"]), int(meta["rows"])
        bins = str(meta.get("bins", "0"))
        self.bins = int(bins) if bins.isdigit() else 0

    def chunks(self, rows: int) -> Iterator[Chunk]:
        yield from iter_rows(self.path, rows)
