"""What the train stage leaves behind: ``models/model.pt`` (the final weights, EMA when kept),
``plots/loss.{csv,png}``, the MLflow model and the end-of-training sample grid in its run, and
``models/summary.json``, the evaluate stage's link to that run. Each file written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lincore.generators import OneStepFlowMatching
from pipelines import figures, tracking
from pipelines.atomic import write_csv, write_json
from pipelines.config import Config
from pipelines.model import checkpoints
from pipelines.model.sampler import OneStepSampler
from pipelines.training.state import final_weights

LOSS_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_mmd",
    "val_inversion_energy",
    "roundtrip_error",
)
"""The columns of ``plots/loss.csv`` (the per-epoch history)."""


def save_trained(
    cfg: Config,
    state: dict[str, Any],
    shape: tuple[int, ...],
    *,
    source: str,
    run: dict[str, str],
    reference: np.ndarray,
    out: Path,
    plots: Path,
    checkpoint_path: str,
) -> dict[str, Any]:
    """Write the outputs of a finished training ``state`` and end its MLflow run FINISHED;
    returns the summary. ``run`` holds ``run_name``, ``run_id`` and ``tracking_uri``;
    ``reference`` is the data a 2-D sample scatter is drawn over."""
    import mlflow
    from mlflow import MlflowClient

    history = state["history"]  # every epoch, resumed ones included
    model = OneStepFlowMatching.build(
        shape, cfg.model, seed=cfg.train.seed, steps=cfg.evaluate.steps
    )
    model.load_state_dict(final_weights(state))
    model_path = out / "model.pt"
    checkpoints.save(model_path, model, cfg.model, shape, run_name=run["run_name"], source=source)
    write_csv(plots / "loss.csv", history, LOSS_COLUMNS)
    loss_fig = figures.curves(
        [int(r["epoch"]) + 1 for r in history],
        {"train": [r["train_loss"] for r in history], "val": [r["val_loss"] for r in history]},
        xlabel="epoch",
        ylabel="loss",
        title=run["run_name"],
    )
    tracking.log_missing_epochs(MlflowClient(run["tracking_uri"]), run["run_id"], history)
    with mlflow.start_run(run_id=run["run_id"]):  # FINISHED once every output is written
        mlflow.log_figure(loss_fig, "plots/loss.png")
        sampler = OneStepSampler(model, cfg.evaluate.steps)
        grid = sampler.sample(cfg.evaluate.grid if len(shape) > 1 else 2000).numpy()
        mlflow.log_figure(
            figures.samples(grid, reference=reference, title="one-step samples (end of training)"),
            "samples/train_end_grid.png",
        )
        model_uri = tracking.log_sampler_model(model_path, sampler)
        figures.save_png(loss_fig, plots / "loss.png")
        final = history[-1]
        summary = {
            "run_name": run["run_name"],
            "mlflow_run_id": run["run_id"],
            "mlflow_model_uri": model_uri,
            "tracking_uri": run["tracking_uri"],
            "epochs": len(history),
            "train_loss": final["train_loss"],
            "val_loss": final["val_loss"],
            "roundtrip_error": final["roundtrip_error"],
            "checkpoint_path": checkpoint_path,
        }
        write_json(out / "summary.json", summary)
    return summary
