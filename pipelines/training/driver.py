"""The driver side of training: one Ray Train ``TorchTrainer`` run of the epoch loop, with
checkpoints, failure handling and a one-line error when it fails.

Checkpoints go to ``train.storage_path``, a folder or a URI (``s3://bucket/runs``; an
S3-compatible endpoint through ``AWS_ENDPOINT_URL``), which Ray Train takes as it is.

The train split reaches the workers as ``train.loader`` says (``batches``): read whole by each
worker (``memory``), or handed to Ray Train as a ``ray.data`` dataset that each worker streams
its shard of (``ray_data``); ``auto`` chooses by the split's size.

Failure handling: Ray Train retries a failed worker group ``train.max_failures`` times, whatever
failed. A ``NumericalFault`` (NaN/inf, a network no longer invertible) is deterministic: each
epoch's randomness depends only on seed, rank and epoch, so a restart from the last checkpoint
meets the same fault. ``fail_fast_on_numerical_faults`` stops such a run at its first failure.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.config import Config, output_path
from pipelines.errors import LinearizerError
from pipelines.training import batches
from pipelines.training.loop import train_loop_per_worker


def unique_run_name(prefix: str = "train") -> str:
    """A fresh Ray run name: a reused one would silently resume an old run (Ray Train continues
    any run whose name already exists under its storage path)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def fail_fast_on_numerical_faults() -> Any:
    """A ``ray.train.UserCallback`` that ends the run, without a restart, when a worker failed
    with a ``NumericalFault``.

    Ray Train v2 retries every worker-group error (``DefaultFailurePolicy``), but an exception
    raised by a callback in the controller's loop becomes a ``ControllerError``, which its
    failure policy does not retry: ``after_exception`` raising on a ``NumericalFault`` makes
    ``fit()`` fail at once. The class is built here so that Ray pickles it by value: the
    controller runs it without importing this module (and torch with it); the fault is found by
    its class name for the same reason."""
    import ray.train

    class FailFastOnNumericalFault(ray.train.UserCallback):
        def after_exception(
            self, run_context: Any, worker_exceptions: dict[int, Exception]
        ) -> None:
            for rank, error in sorted(worker_exceptions.items()):
                fault = _numerical_fault(error)
                if fault is not None:
                    raise RuntimeError(
                        f"NumericalFault on worker {rank} (deterministic: not retried): {fault}"
                    )

    def _numerical_fault(error: BaseException) -> BaseException | None:
        """``error`` itself, or what it wraps (Ray's ``UserExceptionWithTraceback``, causes)."""
        stack: list[Any] = [error]
        seen: set[int] = set()
        while stack:
            e = stack.pop()
            if not isinstance(e, BaseException) or id(e) in seen:
                continue
            seen.add(id(e))
            if any(c.__name__ == "NumericalFault" for c in type(e).__mro__):
                return e
            stack += [getattr(e, "_base_exc", None), e.__cause__, e.__context__]
        return None

    return FailFastOnNumericalFault()


def loop_config(
    cfg: Config,
    train_path: Path,
    val_path: Path,
    *,
    epochs: int | None = None,
    mlflow_run: dict[str, Any] | None = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """What ``fit_epochs`` needs, as plain data (it crosses process boundaries). ``mlflow_run``
    (``{"tracking_uri", "run_id", "grid"}``) is the run rank 0 logs each epoch to; ``loader``
    is ``train.loader`` resolved for ``num_workers`` workers (default ``train.num_workers``):
    ``ray_data`` needs the train split among the trainer's datasets, as ``run`` passes it."""
    workers = cfg.train.num_workers if num_workers is None else num_workers
    config = {
        "model": dataclasses.asdict(cfg.model),
        "train": dataclasses.asdict(cfg.train),
        "epochs": epochs,
        "steps": cfg.evaluate.steps,
        "train_path": str(train_path),
        "val_path": str(val_path),
        "loader": batches.choose_loader(cfg.train.loader, train_path, workers),
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
    train_fn: Callable[[dict[str, Any]], None] = train_loop_per_worker,
) -> Any:
    """Fit with a ``TorchTrainer``; returns the ``ray.train.Result``. Ray must be initialised.

    ``mlflow_run`` (see ``loop_config``): the MLflow run rank 0 logs every epoch to.
    ``train_fn``: the per-worker function (tests wrap ``train_loop_per_worker``)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    workers = t.num_workers if num_workers is None else num_workers
    config = loop_config(
        cfg, train_path, val_path, epochs=epochs, mlflow_run=mlflow_run, num_workers=workers
    )
    data: dict[str, Any] = {}
    if config["loader"] == "ray_data":
        data = {
            "datasets": {batches.DATASET: batches.train_dataset(train_path)},
            "dataset_config": batches.data_config(),
        }
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=t.use_gpu),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        **data,
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(output_path(t.storage_path, "train.storage_path", uri=True)),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            callbacks=[fail_fast_on_numerical_faults(), *(callbacks or [])],
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
