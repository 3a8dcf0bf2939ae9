"""Worker memory and epoch time of the two train loaders (``train.loader``: memory, ray_data) as
the train split grows.

    python -m benchmarks.streaming_memory [--scales 1,10,100,300] [--loaders memory,ray_data]
        [--workers 1] [--epochs 1] [--batch-size 512] [--max-rows N] [--default-model]

Prepares digits in a temporary folder, writes its train split replicated ``scale`` times (at
most ``--max-rows`` rows), and for each scale and loader runs the real training
(``pipelines.training.driver.run``, a local Ray) and reports rank 0's peak resident memory
(``peak_rss_mib``: ``ru_maxrss`` of the worker process, reported by the loop), the peaks of
its private and shared resident memory (``RssAnon``, ``RssShmem``: sampled every 20 ms; the
shared pages are Ray object store blocks the worker read, which ``ru_maxrss`` counts too), and
its median and fastest epoch (epochs after the first when there are several: the first
includes lazy start-up; validation included).
``memory`` holds the whole split in every worker; ``ray_data`` streams the worker's shard, so
its peak should stay flat as the split grows. The model is tiny unless ``--default-model``
(the memory of interest is the data's, and a tiny model keeps 100x affordable on 2 cores).
``measure`` is the reusable part (one loader on one split).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import table
from pipelines import data, ray_runtime
from pipelines.config import Config, DataConfig, ModelConfig, TrainConfig
from pipelines.training.batches import split_bytes
from pipelines.training.driver import run as run_training
from pipelines.training.driver import unique_run_name
from pipelines.training.state import load_result_state

TINY_MODEL = ModelConfig(rank=2, depth=2, hidden=32, operator_hidden=32)


def prepare_digits(folder: Path) -> tuple[Path, Path]:
    """The digits splits in ``folder``: ``(train.parquet, val.parquet)``."""
    cfg = DataConfig(name="digits")
    for name, part in data.split(data.build(cfg), cfg).items():
        data.write_split(folder / f"{name}.parquet", part, seed=0)
    return folder / "train.parquet", folder / "val.parquet"


def replicate_split(src: Path, dest: Path, times: int, max_rows: int | None = None) -> int:
    """``src``'s rows written ``times`` times over into ``dest`` (at most ``max_rows``),
    streamed: never more than one batch of rows in memory. Returns the rows written."""
    info = data.split_info(src)
    meta = data.split_meta(info["source"], int(info["seed"]), int(info["bins"]))
    left = info["rows"] * times if max_rows is None else min(max_rows, info["rows"] * times)
    written = 0
    with data.SplitWriter(dest, tuple(info["shape"]), meta) as writer:
        while left > 0:
            for x, labels in data.iter_rows(src, 8192, limit=left):
                writer.append(x, labels)
                left -= len(x)
                written += len(x)
    return written


def _status_mib(key: str) -> float:
    """A line of ``/proc/self/status`` (``VmRSS``, ``RssAnon``...) in MiB; 0 off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def probing_worker(folder: str) -> Any:
    """``train_loop_per_worker`` that also samples its process's private memory (``RssAnon``:
    heap, torch, numpy; not the Ray object store's shared pages, which ``ru_maxrss`` counts
    once a worker has read them) every 20 ms, and writes the peak to ``folder`` at each epoch's
    end (``hooks.EPOCH_END``)."""

    def per_worker(config: dict[str, Any]) -> None:
        import json
        import threading

        import ray.train

        from pipelines.faults import hooks
        from pipelines.training.loop import train_loop_per_worker

        rank = ray.train.get_context().get_world_rank()
        peak = {"anon": 0.0, "shmem": 0.0}
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak["anon"] = max(peak["anon"], _status_mib("RssAnon"))
                peak["shmem"] = max(peak["shmem"], _status_mib("RssShmem"))

        def note(epoch: int) -> None:
            out = Path(folder) / f"probe-rank{rank}-epoch{epoch}.json"
            out.write_text(json.dumps(peak))

        threading.Thread(target=sample, daemon=True).start()
        hooks.EPOCH_END.append(note)
        try:
            train_loop_per_worker(config)
        finally:
            done.set()

    return per_worker


def measure(
    train_path: Path,
    val_path: Path,
    loader: str,
    *,
    storage: Path,
    epochs: int = 1,
    workers: int = 1,
    model: ModelConfig = TINY_MODEL,
    batch_size: int = 512,
    recompute: str = "auto",
    warmup: float | str = "auto",
) -> dict[str, Any]:
    """Train ``epochs`` epochs on ``train_path`` with ``train.loader: loader`` (Ray must be
    initialised); rank 0's peak RSS and mean epoch time, with the split's rows and bytes."""
    cfg = Config(
        model=model,
        train=TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            num_workers=workers,
            loader=loader,
            recompute=recompute,
            warmup=warmup,
            image_every=0,
            storage_path=str(storage),
        ),
    )
    cfg = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, steps=10))
    probes = Path(tempfile.mkdtemp(prefix="probe-", dir=storage.parent))
    t0 = time.perf_counter()
    result = run_training(
        cfg,
        train_path,
        val_path,
        run_name=unique_run_name(f"stream-{loader}"),
        epochs=epochs,
        train_fn=probing_worker(str(probes)),
    )
    wall = time.perf_counter() - t0
    history = load_result_state(result)["history"]
    steady = history[1:] or history
    probe = json.loads((probes / f"probe-rank0-epoch{epochs - 1}.json").read_text())
    return {
        "loader": loader,
        "rows": data.split_info(train_path)["rows"],
        "data MB": split_bytes(train_path) / 1e6,
        "file MB": train_path.stat().st_size / 1e6,
        "workers": workers,
        "epoch s": statistics.median(h["epoch_seconds"] for h in steady),
        "min epoch s": min(h["epoch_seconds"] for h in steady),
        "peak RSS MiB": float(result.metrics["peak_rss_mib"]),
        "peak private MiB": probe["anon"],
        "peak shared MiB": probe["shmem"],
        "fit wall s": wall,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scales", default="1,10,100,300", help="replications of digits' train split")
    p.add_argument("--loaders", default="memory,ray_data")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=512, help="global batch (fewer steps)")
    p.add_argument("--max-rows", type=int, default=None, help="cap on a replicated split's rows")
    p.add_argument("--default-model", action="store_true", help="params.yaml's model, not tiny")
    args = p.parse_args(argv)
    model = ModelConfig() if args.default_model else TINY_MODEL
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lzr-stream-") as tmp:
        folder = Path(tmp)
        train, val = prepare_digits(folder)
        ray_runtime.init(dashboard=False)  # the machine's CPUs, as the train stage
        for scale in [int(s) for s in args.scales.split(",")]:
            split = folder / f"train_x{scale}.parquet"
            replicate_split(train, split, scale, args.max_rows)
            for loader in args.loaders.split(","):
                row = measure(
                    split,
                    val,
                    loader,
                    storage=folder / "ray",
                    epochs=args.epochs,
                    workers=args.workers,
                    model=model,
                    batch_size=args.batch_size,
                )
                rows.append({"scale": scale, **row})
                print(table([rows[-1]]), flush=True)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
