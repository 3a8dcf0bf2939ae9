"""What a finished sweep is worth: each trial scored on one-step samples and logged to its child
run, the Pareto front, the best model registered, and the DVC outputs (``trials.{csv,parquet}``,
``best_params.yaml``, ``pareto.{csv,png}``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lincore.generators import OneStepFlowMatching
from lincore.metrics import energy_distance, median_seconds, mmd, sliced_wasserstein
from pipelines.common import checkpoints, figures, tracking
from pipelines.common.atomic import atomic_path, write_atomic, write_csv
from pipelines.common.config import Config
from pipelines.common.one_step_sampler import OneStepSampler
from pipelines.training.state import final_weights
from sweeps import registry, trial
from sweeps.mlflow_runs import child_runs


@torch.no_grad()
def score(sampler: OneStepSampler, reference: np.ndarray) -> dict[str, float]:
    """One-step sample quality against held-out data, and the sampling cost."""
    ref = torch.from_numpy(reference)
    x = sampler.sample(len(ref), seed=1234)
    seconds = median_seconds(lambda: sampler.sample(1000, seed=1), repeats=3)
    return {
        "final_mmd": mmd(x, ref),
        "final_swd": sliced_wasserstein(x, ref),
        "final_energy": energy_distance(x, ref),
        "samples_per_s": 1000 / seconds,
    }


def pareto_front(points: list[tuple[float, ...]]) -> list[bool]:
    """``True`` where no other point is at least as good everywhere and better somewhere
    (every objective minimised)."""

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    return [
        not any(dominates(q, p) for q in points if q is not p) and all(map(math.isfinite, p))
        for p in points
    ]


def nested(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"model.rank": 8}`` -> ``{"model": {"rank": 8}}``: paste into params.yaml."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in sorted(params.items()):
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value.item() if hasattr(value, "item") else value
    return out


def summarise(
    cfg: Config,
    grid: Any,
    shape: tuple[int, ...],
    xv: Any,
    exp_id: str,
    parent_id: str,
    sweep_dir: Path,
    out: Path,
) -> dict[str, Any]:
    """Score each trial's final model, log it to its child run, pick and register the best,
    and write the DVC outputs."""
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    s = cfg.sweep
    children = child_runs(exp_id, parent_id)
    client, rows = MlflowClient(), []
    for res in grid:
        metrics = res.metrics or {}
        trial_id = metrics.get("trial_id") or Path(res.path).name
        params = {k: res.config[k] for k in s.space}
        state = None if res.error else trial.final_state(res)
        row = {
            "trial_id": trial_id,
            **params,
            "status": "error" if res.error else "ok",
            "epochs": int(metrics.get("training_iteration", 0)),
            "num_params": int(metrics.get("num_params", 0)),
        }
        child = next((r for t, r in children.items() if t.endswith(trial_id)), None)
        row["mlflow_run_id"] = child.info.run_id if child else ""
        if state is None:
            rows.append({**row, s.metric: float("nan")})
            continue
        tcfg = trial.trial_config(cfg, params, sweep_dir)
        model = OneStepFlowMatching.build(
            shape, tcfg.model, seed=tcfg.train.seed, steps=cfg.evaluate.steps
        )
        model.load_state_dict(final_weights(state))
        sampler = OneStepSampler(model, cfg.evaluate.steps)
        row.update({s.metric: float(state["history"][-1][s.metric]), **score(sampler, xv)})
        model_path = sweep_dir / "models" / trial_id / "model.pt"
        checkpoints.save(model_path, model, tcfg.model, shape, run_name=trial_id, source="sweep")
        if child is not None:
            now = int(time.time() * 1000)
            final = [
                Metric(k, float(row[k]), now, 0)
                for k in ("final_mmd", "final_swd", "final_energy", "samples_per_s")
            ]
            client.log_batch(child.info.run_id, metrics=final)
            with mlflow.start_run(run_id=child.info.run_id, nested=True):
                row["model_uri"] = tracking.log_sampler_model(model_path, sampler)
        rows.append(row)

    ok = [r for r in rows if r["status"] == "ok"]
    front = pareto_front([(r[s.metric], float(r["num_params"])) for r in ok])
    for r, on in zip(ok, front, strict=True):
        r["pareto"] = on
    best = min(ok, key=lambda r: r[s.metric])
    if s.objectives == "pareto":
        best = min((r for r in ok if r["pareto"]), key=lambda r: r[s.metric])
    version = ""
    if best.get("model_uri"):
        version = registry.register(best["model_uri"], s.registry_name, best["mlflow_run_id"])

    columns = [
        "trial_id",
        *s.space,
        "status",
        "epochs",
        s.metric,
        "final_mmd",
        "final_swd",
        "final_energy",
        "num_params",
        "samples_per_s",
        "pareto",
        "mlflow_run_id",
    ]
    write_csv(out / "trials.csv", rows, columns)
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
    write_atomic(out / "trials.parquet", lambda p: pq.write_table(table, p))
    write_csv(
        out / "pareto.csv",
        [{**r, "objective": r[s.metric]} for r in ok],
        ["num_params", "objective", "pareto", "trial_id"],
    )
    best_params = {
        **nested({k: best[k] for k in s.space}),
        "objective": {
            s.metric: best[s.metric],
            "num_params": best["num_params"],
            "trial_id": best["trial_id"],
            "registered_version": version,
        },
    }
    with atomic_path(out / "best_params.yaml") as tmp:
        tmp.write_text(
            f"# best trial of sweep {sweep_dir.name}: paste the sections into params.yaml\n"
            + yaml.safe_dump(best_params, sort_keys=False)
        )
    fig = figures.pareto(
        [r["num_params"] for r in ok],
        [r[s.metric] for r in ok],
        front,
        xlabel="parameters (log)",
        ylabel=f"{s.metric} (one-step, lower is better)",
        labels=[f"r{r.get('model.rank', '')} d{r.get('model.depth', '')}" for r in ok],
        title=f"{sweep_dir.name}: one-step quality vs model size",
    )
    mlflow.log_figure(fig, "pareto.png")
    figures.save_png(fig, out / "pareto.png")
    mlflow.log_artifact(str(out / "trials.csv"))
    mlflow.log_metrics({f"best_{s.metric}": best[s.metric], "best_num_params": best["num_params"]})
    mlflow.set_tags({"best_trial": best["trial_id"], "best_run_id": best["mlflow_run_id"]})
    return {
        "name": sweep_dir.name,
        "parent_run_id": parent_id,
        "rows": rows,
        "best": best,
        "registered_version": version,
        "out": str(out),
    }
