"""The prepared split: one Parquet file per split, the one data contract of the pipeline.

One row per sample: ``x``, a fixed-size list of float32 (the flattened sample), and ``label``
(int64, -1 when unlabelled); the schema metadata carries ``shape``, ``value_range``, ``source``,
``seed`` and ``bins`` (grey levels of dequantised discrete data; 0 for continuous data).

8-bit data (``bins`` 256: MNIST, CIFAR, photos) is stored as its ``uint8`` levels instead
(``storage: levels``; 4x smaller: CelebA at 64x64 is 2 GB instead of 8): every reader here
dequantises it with noise fixed by the row (``(level + u) / 256``, the same values whatever the
batch size: evaluation and validation), and training reads the levels themselves
(``read_levels``) to dequantise with fresh noise per batch (``fresh_dequantise``).

Written in row groups of bounded size (``SplitWriter``), so that ``prepare`` never holds a large
data set in memory, and read whole (``read_split``: small data), by its first rows
(``read_head``: validation batches, ActNorm initialisation) or in batches (``iter_rows``:
evaluation), so that readers hold at most what they ask for. Paths may be URIs (``s3://``...).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.atomic import atomic_path
from pipelines.data.levels import dequantise, fresh_dequantise
from pipelines.errors import DataError

ROW_GROUP_BYTES = 64 * 2**20
"""Target size of a row group: a reader's unit of memory (about 1,300 images of 3x64x64)."""


LEVEL_BINS = 256
"""Data with this many grey levels is stored as ``uint8`` levels."""
READ_NOISE_SALT = 7919
"""Added to the split's seed for the fixed read noise: not the noise the source used."""


def rows_per_group(dim: int) -> int:
    """Rows of ``dim`` float32 values in one row group of about ``ROW_GROUP_BYTES``."""
    return max(1, ROW_GROUP_BYTES // (4 * max(dim, 1)))


def stores_levels(meta: dict[str, Any]) -> bool:
    """Whether a split (its metadata) holds ``uint8`` levels rather than float32 values."""
    return meta.get("storage") == "levels"


def _column(flat: np.ndarray) -> pa.FixedSizeListArray:
    kind = pa.uint8() if flat.dtype == np.uint8 else pa.float32()
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), kind), flat.shape[1])


def _to_levels(flat: np.ndarray, bins: int) -> np.ndarray:
    """Dequantised values back to their levels: ``floor(x * bins)``, exact for the values
    ``(level + u) / bins`` that sources write (each stays in its bin)."""
    return np.clip(np.floor(flat * np.float32(bins)), 0, bins - 1).astype(np.uint8)


class SplitWriter(AbstractContextManager):
    """Append chunks of ``(x, labels)`` to one split's Parquet file, atomically: the file
    appears under its name only when the writer closes without an error.

    The value range is known only at the end, and Parquet's metadata is written with the
    schema: the writer keeps it in the footer's key-value metadata (``pq.ParquetWriter``'s
    ``add_key_value_metadata``), which readers merge with the schema's."""

    def __init__(
        self, path: Path | storage.StorageUri, shape: tuple[int, ...], meta: dict[str, str]
    ) -> None:
        self.path, self.shape = path, tuple(shape)
        self.dim = int(np.prod(self.shape))
        self.levels = str(meta.get("bins", "0")) == str(LEVEL_BINS)
        self.meta = {**meta, "shape": json.dumps(list(self.shape))}
        if self.levels:
            self.meta["storage"] = "levels"
        self.low, self.high, self.rows = np.inf, -np.inf, 0
        self._stack = ExitStack()
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._group = rows_per_group(self.dim)

    def __enter__(self) -> SplitWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        kind = pa.uint8() if self.levels else pa.float32()
        schema = pa.schema(
            [("x", pa.list_(kind, self.dim)), ("label", pa.int64())],
            metadata={k: v for k, v in self.meta.items()},
        )
        self._writer = self._stack.enter_context(pq.ParquetWriter(tmp, schema))
        return self

    def append(self, x: np.ndarray, labels: np.ndarray) -> None:
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if flat.shape[1] != self.dim:
            raise DataError(f"{self.path}: a chunk of {x.shape[1:]} in a split of {self.shape}")
        if len(flat):
            self.low = min(self.low, float(flat.min()))
            self.high = max(self.high, float(flat.max()))
        if self.levels:
            flat = _to_levels(flat, LEVEL_BINS)
        self._pending.append((flat, np.asarray(labels, dtype=np.int64)))
        self._pending_rows += len(flat)
        while self._pending_rows >= self._group:
            self._flush(self._group)

    def _flush(self, rows: int) -> None:
        flat = np.concatenate([p[0] for p in self._pending])
        labels = np.concatenate([p[1] for p in self._pending])
        head, rest = (flat[:rows], labels[:rows]), (flat[rows:], labels[rows:])
        table = pa.table({"x": _column(head[0]), "label": pa.array(head[1], pa.int64())})
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=rows)
        self.rows += rows
        self._pending = [rest] if len(rest[0]) else []
        self._pending_rows = len(rest[0])

    def __exit__(self, *exc: Any) -> bool | None:
        if exc[0] is None:
            try:
                if self._pending_rows:
                    self._flush(self._pending_rows)
                assert self._writer is not None
                self._writer.add_key_value_metadata(
                    {"value_range": json.dumps([self.low, self.high]), "rows": str(self.rows)}
                )
            except BaseException as err:  # the temporary file is removed, the target untouched
                self._stack.__exit__(type(err), err, err.__traceback__)
                raise
        return self._stack.__exit__(*exc)


class InMemorySplit(Protocol):
    x: np.ndarray  # (N, *shape)
    labels: np.ndarray  # (N,)
    source: str
    bins: int


def split_meta(source: str, seed: int, bins: int) -> dict[str, str]:
    """The schema metadata a split starts with (``SplitWriter`` adds shape, range and rows)."""
    return {"source": source, "seed": str(seed), "bins": str(bins)}


def write_split(path: Path | storage.StorageUri, part: InMemorySplit, *, seed: int) -> None:
    """A split held in memory (small data), written atomically (a local path or a URI)."""
    with SplitWriter(path, tuple(part.x.shape[1:]), split_meta(part.source, seed, part.bins)) as w:
        w.append(part.x, part.labels)


def _open(path: str | Path) -> tuple[pq.ParquetFile, str]:
    p = storage.StorageUri(path) if storage.is_uri(path) else Path(path)
    try:
        found = p.is_file()
    except (pa.ArrowException, OSError) as err:  # a URI whose storage answered with an error
        raise DataError(f"cannot read prepared data {p} ({' '.join(str(err).split())})") from None
    if not found:
        raise DataError(f"prepared data {p} is missing; run `dvc repro prepare` first")
    try:
        if isinstance(p, storage.StorageUri):
            fs, inner = storage.filesystem(p.as_uri())
            return pq.ParquetFile(fs.open_input_file(inner)), str(p)
        return pq.ParquetFile(p), str(p)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{p} is not a readable Parquet file ({err}); re-run prepare") from None


def split_info(path: str | Path) -> dict[str, Any]:
    """The split's metadata (``shape`` as a tuple, ``rows``, ``bins``...) without its data."""
    f, name = _open(path)
    return _meta(f, name)


def _meta(f: pq.ParquetFile, name: str) -> dict[str, Any]:
    raw = dict(f.schema_arrow.metadata or {})
    raw.update(f.metadata.metadata or {})  # the footer's (value_range, rows) win
    if b"shape" not in raw or "x" not in f.schema_arrow.names:
        raise DataError(f"{name} lacks the 'x' column or the shape metadata; re-run prepare")
    meta: dict[str, Any] = {
        k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"ARROW")
    }
    meta["shape"] = tuple(json.loads(meta["shape"]))
    meta["rows"] = f.metadata.num_rows
    if meta["rows"] == 0:
        raise DataError(f"{name} has no rows; re-run prepare with more data")
    return meta


def _decode(
    batch: pa.RecordBatch | pa.Table,
    meta: dict[str, Any],
    name: str,
    start: int,
    *,
    levels: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, labels)`` of rows ``start, start + 1, ...``: float32 (levels dequantised with the
    row's fixed noise), or with ``levels`` the stored ``uint8`` levels as they are."""
    shape = meta["shape"]
    column = batch.column("x")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    x = column.flatten().to_numpy(zero_copy_only=False)
    try:
        x = x.reshape(batch.num_rows, *shape)
    except ValueError:
        raise DataError(f"{name}: rows do not match the shape {shape} in its metadata") from None
    if stores_levels(meta) and not levels:
        seed = int(meta.get("seed", 0)) + READ_NOISE_SALT
        x = dequantise(x, start, int(meta.get("bins", 256)), seed)
    elif levels:
        x = np.array(x, dtype=np.uint8)  # writable: torch takes it without a copy or warning
    else:
        x = x.astype(np.float32, copy=False)
    if not levels and not np.isfinite(x).all():
        raise DataError(f"{name} contains NaN or inf; re-run prepare on clean data")
    labels = (
        np.asarray(batch.column("label").to_numpy(), dtype=np.int64)
        if "label" in batch.schema.names
        else np.full(batch.num_rows, -1, dtype=np.int64)
    )
    return x, labels


def _batches(
    f: pq.ParquetFile, meta: dict[str, Any], name: str, batch_rows: int, limit: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    left = meta["rows"] if limit is None else min(limit, meta["rows"])
    start = 0
    for batch in f.iter_batches(batch_size=batch_rows):
        if left <= 0:
            break
        if batch.num_rows > left:
            batch = batch.slice(0, left)
        left -= batch.num_rows
        yield _decode(batch, meta, name, start)
        start += batch.num_rows


def iter_rows(
    path: str | Path, batch_rows: int, *, limit: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(x, labels)`` batches of at most ``batch_rows`` rows, the first ``limit`` rows (all
    when ``None``): memory bounded by the batch, whatever the split's size."""
    f, name = _open(path)
    yield from _batches(f, _meta(f, name), name, batch_rows, limit)


def read_head(path: str | Path, rows: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The first ``rows`` rows of a split (all when it has fewer): ``(x, labels, metadata)``,
    from one opening of the file."""
    f, name = _open(path)
    meta = _meta(f, name)
    parts = list(_batches(f, meta, name, min(rows, 8192), rows))
    x = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return x, labels, meta


def read_split(
    path: str | Path, *, levels: bool = False
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(x (N, *shape) float32, labels (N,), metadata)``: the whole split, checked (small
    data; large splits are read with ``iter_rows`` or through Ray Data). With ``levels``, a
    split of 8-bit data comes as its ``uint8`` levels (``stores_levels``), for a training
    loader that dequantises each batch afresh; other splits come as float32 regardless."""
    f, name = _open(path)
    meta = _meta(f, name)
    try:
        table = f.read()
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{name} is not a readable Parquet file ({err}); re-run prepare") from None
    x, labels = _decode(table, meta, name, 0, levels=levels and stores_levels(meta))
    return x, labels, meta


__all__ = [
    "SplitWriter",
    "fresh_dequantise",
    "iter_rows",
    "read_head",
    "read_split",
    "split_info",
    "stores_levels",
    "write_split",
]
