"""Data sets in, Parquet out: the one data contract of the pipeline.

``sources``: the data sets users have (toys, digits, files on disk or at a URI) as samples;
``parquet``: the prepared split (one Parquet file per split, written in bounded row groups, read
whole, by its head or in batches). Nothing is downloaded from the internet.
"""

from pipelines.common.data.parquet import (
    SplitWriter,
    iter_rows,
    read_head,
    read_split,
    split_info,
    split_meta,
    write_split,
)
from pipelines.common.data.sources import Dataset, build, split

__all__ = [
    "Dataset",
    "SplitWriter",
    "build",
    "iter_rows",
    "read_head",
    "read_split",
    "split",
    "split_info",
    "split_meta",
    "write_split",
]
