"""Stage ``prepare``: build the data set named in params.yaml into train/val/test Parquet files.

    python -m pipelines.stages.prepare [--params params.yaml] [--out data/prepared]

Deterministic for ``data.seed``; every file is written atomically. ``--out`` (and ``data.path``)
may be a URI such as ``s3://bucket/prepared`` (see ``pipelines.common.storage``).
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from pipelines.common import config as config_mod
from pipelines.common import data
from pipelines.common.atomic import write_json
from pipelines.common.errors import cli

SECTIONS = ("data",)
"""The params.yaml sections this stage reads (dvc.yaml's ``params`` for it)."""


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default=str(config_mod.PARAMS_FILE))
    p.add_argument("--out", default=config_mod.PREPARED)
    args = p.parse_args(argv)
    cfg = config_mod.load(args.params, SECTIONS)
    out = config_mod.output_path(args.out, "--out", uri=True)  # a folder or a URI (s3://...)
    ds = data.build(cfg.data)
    splits = data.split(ds, cfg.data)
    for name, part in tqdm(splits.items(), desc="writing Parquet", unit="split"):
        data.write_split(out / f"{name}.parquet", part, seed=cfg.data.seed)
    sizes = {name: len(part.x) for name, part in splits.items()}
    write_json(
        out / "stats.json",
        {
            "source": ds.source,
            "shape": list(ds.shape),
            "rows": sizes,
            "mean": float(ds.x.mean()),
            "std": float(ds.x.std()),
        },
    )
    print(f"prepared {ds.source}: shape {ds.shape}, rows {sizes} -> {out}")
    return sizes


if __name__ == "__main__":
    cli(main)()
