"""Stage ``prepare``: build the data set named in params.yaml into train/val/test Parquet files.

    python -m pipelines.stages.prepare [--params params.yaml] [--out data/prepared]

The data are streamed: every sample is assigned to a split first (a seeded permutation, the one
``data.split`` uses), then the source is read a chunk at a time and each chunk's rows go to
their split's writer, so memory holds one chunk whatever the data set's size. Deterministic for
``data.seed`` (byte-identical files); every file is written atomically, and an error midway
leaves no split behind. ``--out`` (and ``data.path``) may be a URI such as
``s3://bucket/prepared`` (see ``pipelines.storage``).
"""

from __future__ import annotations

import argparse

from pipelines import config as config_mod
from pipelines import data
from pipelines.atomic import write_json
from pipelines.data.preparing import write_splits
from pipelines.entry import cli

SECTIONS = ("data",)
"""The params.yaml sections this stage reads (dvc.yaml's ``params`` for it)."""


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default=str(config_mod.PARAMS_FILE))
    p.add_argument("--out", default=config_mod.PREPARED)
    args = p.parse_args(argv)
    cfg = config_mod.load(args.params, SECTIONS)
    out = config_mod.output_path(args.out, "--out", uri=True)  # a folder or a URI (s3://...)
    with data.open_source(cfg.data) as src:
        if src.note:
            print(src.note)
        sizes, moments = write_splits(src, out, cfg.data)
    write_json(
        out / "stats.json",
        {
            "source": src.name,
            "shape": list(src.shape),
            "rows": sizes,
            "mean": moments.mean,
            "std": moments.std,
        },
    )
    print(f"prepared {src.name}: shape {src.shape}, rows {sizes} -> {out}")
    return sizes


if __name__ == "__main__":
    cli(main)()
