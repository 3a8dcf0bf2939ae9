"""Data sets in, Parquet out: the one data contract of the pipeline.

``sources``: the data sets users have (toys, digits, MNIST IDX, CIFAR-10 batches, image folders,
.npz and Parquet files, on disk or at a URI), read as streams of chunks (``open_source``) or
whole for small data (``build``), and the seeded train/val/test split; ``parquet``: the prepared
split (one Parquet file per split, written in bounded row groups, read whole, by its head or in
batches). Nothing is downloaded from the internet.
"""

from pipelines.data.parquet import (
    SplitWriter,
    iter_rows,
    read_head,
    read_split,
    split_info,
    split_meta,
    write_split,
)
from pipelines.data.sources import (
    SPLITS,
    Dataset,
    Source,
    assignment,
    build,
    open_source,
    split,
    split_indices,
)

__all__ = [
    "SPLITS",
    "Dataset",
    "Source",
    "SplitWriter",
    "assignment",
    "build",
    "iter_rows",
    "open_source",
    "read_head",
    "read_split",
    "split",
    "split_indices",
    "split_info",
    "split_meta",
    "write_split",
]
