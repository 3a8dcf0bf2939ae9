"""The image flow's memory and speed before and after issue 23: one training step, and a Ray
Train worker of the pipeline.

    python -m benchmarks.image_memory [--skip-pipeline]

Table 1, one training step (forward, backward, Adam; the second of two) in a fresh process:
peak RSS above the process's start and samples per second, for the image flow as it was (one
scale, raw pixels, activations stored: ``model.levels: 1, model.pixels: raw, train.recompute:
off``) and as it ships (``model.flow: image`` and every other default: multi-scale, logit
pixels, ``train.recompute: auto``), at depth 6 and 24, rank 8, hidden 128, at 1x28x28 (batch
256, MNIST's usual) and 3x64x64 (batch 16). "depth 24 / depth 6" is the memory growth.

Table 2, the pipeline itself (``pipelines.training.driver.run``, a local Ray, one worker, the
``memory`` loader): rank 0's peak RSS (``ru_maxrss``) over one epoch of 160 random 3x64x64 8-bit
images, batch 16, depth 6, before and after.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import fresh_process, table
from benchmarks.image_scale import MEMORY_SHARE, available_MB, measure_train_step
from lincore.generators import OneStepConfig, OneStepFlowMatching
from lincore.inn import set_recompute
from pipelines.training.loop import recomputes

BEFORE = {"levels": 1, "pixels": "raw", "two_networks": False}
CASES = [("1x28x28", (1, 28, 28), 256), ("3x64x64", (3, 64, 64), 16)]


def _step_case(
    shape: tuple[int, ...], batch: int, depth: int, before: bool, queue: mp.Queue
) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = OneStepConfig(flow="image", rank=8, depth=depth, **(BEFORE if before else {}))
    model = OneStepFlowMatching.build(shape, cfg)
    recompute = "off" if before else "auto"
    on = recomputes(recompute, "image", batch * int(np.prod(shape)))
    set_recompute(model, on)
    queue.put(measure_train_step(model, shape, batch) | {"recompute": on})


def step_table() -> list[dict[str, Any]]:
    rows = []
    for name, shape, batch in CASES:
        for before in (True, False):
            peaks: dict[int, float] = {}
            for depth in (6, 24):
                need = peaks.get(6, 0.0) * depth / 6  # stored activations grow with depth
                if need > MEMORY_SHARE * available_MB():
                    r = {"peak_MB": f"not run: needs about {need / 1024:.0f} GB"}
                else:
                    r = fresh_process(_step_case, shape, batch, depth, before)
                    peaks[depth] = r["peak_MB"]
                row = {
                    "shape": name,
                    "batch": batch,
                    "image flow": "before (1 scale, raw, stored)" if before else "default now",
                    "depth": depth,
                    **r,
                }
                if depth == 24 and 24 in peaks:
                    row["depth 24 / depth 6"] = peaks[24] / peaks[6]
                print(row, flush=True)
                rows.append(row)
    return rows


def pipeline_table() -> list[dict[str, Any]]:
    from benchmarks.streaming_memory import measure
    from pipelines import data, ray_runtime
    from pipelines.config import ModelConfig

    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="lzr-imgmem-") as tmp:
        folder = Path(tmp)
        for name, n in (("train", 160), ("val", 32)):
            levels = rng.integers(0, 256, (n, 3, 64, 64))
            x = ((levels + rng.random(levels.shape)) / 256).astype(np.float32)
            part = data.Dataset(x, np.full(n, -1), "benchmark", bins=256)
            data.write_split(folder / f"{name}.parquet", part, seed=0)
        ray_runtime.init(dashboard=False)
        for before in (True, False):
            model = ModelConfig(flow="image", rank=8, **(BEFORE if before else {}))
            row = measure(
                folder / "train.parquet",
                folder / "val.parquet",
                "memory",
                storage=folder / "ray",
                model=model,
                batch_size=16,
                recompute="off" if before else "auto",
                warmup=0.0 if before else "auto",  # the peak is a full step's either way
            )
            keep = ("peak RSS MiB", "peak private MiB", "epoch s", "file MB")
            rows.append(
                {"image flow": "before" if before else "default now"} | {k: row[k] for k in keep}
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-pipeline", action="store_true")
    args = ap.parse_args(argv)
    out = ["## One training step (peak RSS above start)", table(step_table())]
    if not args.skip_pipeline:
        out += ["## A Ray Train worker, 3x64x64, batch 16, one epoch", table(pipeline_table())]
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
