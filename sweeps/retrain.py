"""The sweep's candidate: the best trial's configuration retrained at the train stage's full
``train.epochs`` budget, in an MLflow run of its own, scored like every other contender."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipelines import tracking
from pipelines.config import Config
from pipelines.model import checkpoints
from sweeps import trial
from sweeps.mlflow_runs import PARENT_TAG, ROLE_TAG, TRIAL_TAG, data_params, log_final
from sweeps.scoring import FINAL_METRICS, score, trained_sampler


def _retrain_run(
    exp_id: str, parent_id: str, name: str, trial_id: str, tcfg: Config, data: Path
) -> str:
    """The retrain's MLflow run (reopened after a resume): not a child of the sweep's parent
    (those are its trials), linked to it by tags."""
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    client = MlflowClient()
    found = client.search_runs(
        [exp_id],
        f"tags.`{PARENT_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'retrain'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    tags = {ROLE_TAG: "retrain", PARENT_TAG: name, TRIAL_TAG: trial_id, "sweep_parent": parent_id}
    run_id = client.create_run(exp_id, run_name=f"{name}-retrain", tags=tags).info.run_id
    params = {**trial.logged_params(tcfg), **data_params(data)}
    items = sorted((k, str(v)) for k, v in params.items())
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_inputs(run_id, [tracking.dataset_input(data, name=tcfg.data.name)])
    return run_id


def retrain(
    cfg: Config,
    best: dict[str, Any],
    shape: tuple[int, ...],
    xv: np.ndarray,
    exp_id: str,
    parent_id: str,
    sweep_dir: Path,
    data_dir: Path,
) -> dict[str, Any]:
    """Train the best trial's configuration for the full ``train.epochs`` (one Ray Train run of
    ``sweep.workers_per_trial`` workers, at least one) into an MLflow run of its own, logged
    live like the train stage's; score it and log its model."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.training.driver import run as run_training
    from pipelines.training.state import load_result_state

    s = cfg.sweep
    params = {k: best[k] for k in s.space}
    tcfg = trial.trial_config(cfg, params, sweep_dir, epochs=cfg.train.epochs)
    name, trial_id = sweep_dir.name, str(best["trial_id"])
    run_id = _retrain_run(exp_id, parent_id, name, trial_id, tcfg, data_dir)
    client = MlflowClient()
    live = {"tracking_uri": mlflow.get_tracking_uri(), "run_id": run_id}
    print(
        f"retraining trial {trial_id}'s configuration for {tcfg.train.epochs} epochs "
        f"(train.epochs; its trial had {best['epochs']}); MLflow run {run_id}",
        flush=True,
    )
    with tracking.failed_on_error(client, run_id):
        result = run_training(
            tcfg,
            data_dir / "train.parquet",
            data_dir / "val.parquet",
            run_name=f"retrain-{trial_id}",
            num_workers=max(1, s.workers_per_trial),
            mlflow_run=live,
        )
        state = load_result_state(result)
        tracking.log_missing_epochs(client, run_id, state["history"])
        model, sampler = trained_sampler(state, tcfg, shape, cfg.evaluate.steps)
        model_path = sweep_dir / "models" / f"retrain-{trial_id}" / "model.pt"
        checkpoints.save(model_path, model, tcfg.model, shape, run_name=run_id, source="sweep")
        last = state["history"][-1]
        row = {
            "epochs": len(state["history"]),
            s.metric: float(last[s.metric]),
            "num_params": int(last.get("num_params", 0)),
            **score(sampler, xv),
        }
        log_final(run_id, row, (*FINAL_METRICS, "num_params"))  # trials log it every epoch
        with mlflow.start_run(run_id=run_id, nested=True):  # FINISHED on leaving
            row["model_uri"] = tracking.log_sampler_model(model_path, sampler)
    return {**row, "run_id": run_id}
