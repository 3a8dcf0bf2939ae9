"""The driver side of training: one Ray Train ``TorchTrainer`` run of the epoch loop, with
checkpoints, failure handling and a one-line error when it fails."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

from pipelines.common.config import Config, output_path
from pipelines.common.errors import LinearizerError
from pipelines.training.loop import train_loop_per_worker


def unique_run_name(prefix: str = "train") -> str:
    """A fresh Ray run name: a reused one would silently resume an old run (Ray Train continues
    any run whose name already exists under its storage path)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def loop_config(
    cfg: Config,
    train_path: Path,
    val_path: Path,
    *,
    epochs: int | None = None,
    mlflow_run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``fit_epochs`` needs, as plain data (it crosses process boundaries). ``mlflow_run``
    (``{"tracking_uri", "run_id", "grid"}``) is the run rank 0 logs each epoch to."""
    config = {
        "model": dataclasses.asdict(cfg.model),
        "train": dataclasses.asdict(cfg.train),
        "epochs": epochs,
        "steps": cfg.evaluate.steps,
        "train_path": str(train_path),
        "val_path": str(val_path),
    }
    if mlflow_run is not None:
        config["mlflow"] = mlflow_run
    return config


def run(
    cfg: Config,
    train_path: Path,
    val_path: Path,
    *,
    run_name: str,
    epochs: int | None = None,
    num_workers: int | None = None,
    callbacks: list[Any] | None = None,
    mlflow_run: dict[str, Any] | None = None,
) -> Any:
    """Fit with a ``TorchTrainer``; returns the ``ray.train.Result``. Ray must be initialised.

    ``mlflow_run`` (see ``loop_config``): the MLflow run rank 0 logs every epoch to."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    workers = t.num_workers if num_workers is None else num_workers
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(
            cfg, train_path, val_path, epochs=epochs, mlflow_run=mlflow_run
        ),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=t.use_gpu),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(output_path(t.storage_path, "train.storage_path")),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            callbacks=callbacks,
        ),
    )
    try:
        return trainer.fit()
    except Exception as err:  # Ray wraps worker errors; surface the root cause in one line
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        text = str(cause).strip().splitlines()
        message = next((ln for ln in reversed(text) if "NumericalFault" in ln), None)
        raise LinearizerError(
            f"training run {run_name} failed: {message or (text[-1] if text else repr(cause))}"
        ) from None
