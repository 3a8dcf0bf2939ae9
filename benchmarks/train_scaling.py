"""Ray Train throughput with 1 and 2 workers, and the share of a short run spent starting up.

    python -m benchmarks.train_scaling [--epochs 4] [--workers 1,2] [--gpu]

Prepares digits in a temporary folder, then for each worker count runs the real train loop
(``pipelines.training.driver.run``) and reports: training samples/s (from the epochs' own timings),
wall time of ``fit()``, and the share of it not spent in epochs (worker start-up, checkpoints,
teardown). ``ray.init`` is timed once. Ratios against 1 worker come from the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import table
from pipelines import data, ray_runtime
from pipelines.config import Config, DataConfig, TrainConfig
from pipelines.training.driver import run as run_training
from pipelines.training.driver import unique_run_name
from pipelines.training.state import load_result_state


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--gpu", action="store_true", help="use_gpu: true (NCCL)")
    args = p.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg_data = DataConfig(name="digits")
        for name, part in data.split(data.build(cfg_data), cfg_data).items():
            data.write_split(Path(tmp) / f"{name}.parquet", part, seed=0)
        n = len(data.read_split(Path(tmp) / "train.parquet")[0])
        t0 = time.perf_counter()
        ray_runtime.init()
        init_s = time.perf_counter() - t0
        for workers in [int(w) for w in args.workers.split(",")]:
            cfg = Config(
                train=TrainConfig(
                    num_workers=workers, use_gpu=args.gpu, storage_path=str(Path(tmp) / "ray")
                )
            )
            ray_runtime.check_workers(workers, args.gpu)
            t0 = time.perf_counter()
            result = run_training(
                cfg,
                Path(tmp) / "train.parquet",
                Path(tmp) / "val.parquet",
                run_name=unique_run_name("bench"),
                epochs=args.epochs,
            )
            wall = time.perf_counter() - t0
            history = load_result_state(result)["history"]
            steady = history[1:] or history  # the first epoch includes lazy start-up
            epoch_s = sum(h["epoch_seconds"] for h in steady) / len(steady)
            rows.append(
                {
                    "workers": workers,
                    "samples/s": n / epoch_s,
                    "fit wall s": wall,
                    "epochs s": sum(h["epoch_seconds"] for h in history),
                    "start-up + teardown share": 1
                    - sum(h["epoch_seconds"] for h in history) / wall,
                    "ray.init s": init_s,
                }
            )
    for r in rows:
        r["speedup vs 1"] = r["samples/s"] / rows[0]["samples/s"]
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
