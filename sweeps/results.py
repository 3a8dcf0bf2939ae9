"""What a finished sweep is worth: each trial's final model scored (``sweeps.scoring``) and
logged to its child run, the Pareto front and the best trial, the candidate (the best
configuration retrained at the full ``train.epochs``, ``sweeps.retrain``) put to the champion
guard (``sweeps.champion``), and the outputs written (``sweeps.outputs``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.config import Config
from pipelines.errors import LinearizerError
from pipelines.model import checkpoints
from pipelines.tracking.dataset import describe
from sweeps import outputs, trial
from sweeps.champion import crown
from sweeps.mlflow_runs import child_runs, log_final
from sweeps.retrain import retrain
from sweeps.scoring import FINAL_METRICS, score, trained_sampler


def pareto_front(points: list[tuple[float, ...]]) -> list[bool]:
    """``True`` where no other point is at least as good everywhere and better somewhere
    (every objective minimised)."""

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    return [
        not any(dominates(q, p) for q in points if q is not p) and all(map(math.isfinite, p))
        for p in points
    ]


def pick_best(cfg: Config, ok: list[dict[str, Any]]) -> dict[str, Any]:
    """The best trial by ``sweep.metric``, among those that trained the whole ``max_epochs``
    when there are any (a trial ASHA stopped was judged at a smaller budget); for the Pareto
    objective, among the front."""
    s = cfg.sweep
    pool = [r for r in ok if r["epochs"] >= s.max_epochs] or ok
    if s.objectives == "pareto":
        pool = [r for r in pool if r["pareto"]] or pool
    return min(pool, key=lambda r: r[s.metric])


def score_trials(
    cfg: Config,
    grid: Any,
    shape: tuple[int, ...],
    xv: Any,
    exp_id: str,
    parent_id: str,
    sweep_dir: Path,
) -> list[dict[str, Any]]:
    """A row per trial: its params, status and budget; for a finished one its final model
    scored, saved under ``sweep_dir/models`` and logged (metrics and model) to its child run."""
    import mlflow

    s = cfg.sweep
    children = child_runs(exp_id, parent_id)
    rows = []
    for res in grid:
        metrics = res.metrics or {}
        trial_id = metrics.get("trial_id") or Path(res.path).name
        params = {k: res.config[k] for k in s.space}
        state = None if res.error else trial.final_state(res)
        row = {
            "trial_id": trial_id,
            **params,
            "status": "error" if res.error else "ok",
            "epochs": len(state["history"]) if state else int(metrics.get(trial.EPOCHS_DONE, 0)),
            "num_params": int(metrics.get("num_params", 0)),
        }
        child = children.get(str(trial_id))
        row["mlflow_run_id"] = child.info.run_id if child else ""
        if state is None:
            rows.append({**row, s.metric: float("nan")})
            continue
        tcfg = trial.trial_config(cfg, params, sweep_dir)
        model, sampler = trained_sampler(state, tcfg, shape, cfg.evaluate.steps)
        row.update({s.metric: float(state["history"][-1][s.metric]), **score(sampler, xv)})
        model_path = sweep_dir / "models" / trial_id / "model.pt"
        checkpoints.save(model_path, model, tcfg.model, shape, run_name=trial_id, source="sweep")
        if child is not None:
            log_final(child.info.run_id, row, FINAL_METRICS)
            with mlflow.start_run(run_id=child.info.run_id, nested=True):
                row["model_uri"] = tracking.log_sampler_model(model_path, sampler)
        rows.append(row)
    return rows


def summarise(
    cfg: Config,
    grid: Any,
    shape: tuple[int, ...],
    xv: Any,
    exp_id: str,
    parent_id: str,
    sweep_dir: Path,
    out: Path,
    *,
    data_dir: Path | None = None,
    train_model: Path | None = None,
) -> dict[str, Any]:
    """Score each trial's final model and log it to its child run; retrain the best trial's
    configuration at ``train.epochs`` (when its trials had fewer, and ``data_dir`` is given);
    register it if it beats the current champion and ``train_model``; write the DVC outputs."""
    s = cfg.sweep
    rows = score_trials(cfg, grid, shape, xv, exp_id, parent_id, sweep_dir)
    ok = [r for r in rows if r["status"] == "ok"]
    front = pareto_front([(r[s.metric], float(r["num_params"])) for r in ok])
    for r, on in zip(ok, front, strict=True):
        r["pareto"] = on
    best = pick_best(cfg, ok)

    # the candidate: the best configuration at the train stage's budget
    if data_dir is not None and cfg.train.epochs > best["epochs"]:
        try:
            retrained = retrain(cfg, best, shape, xv, exp_id, parent_id, sweep_dir, data_dir)
            candidate = {"source": "retrain", **retrained}
        except LinearizerError as err:  # e.g. a NumericalFault the short trial never reached
            print(f"warning: {err}; nothing is registered", file=sys.stderr, flush=True)
            candidate = {"source": "retrain", "epochs": 0, "error": str(err)}
    else:
        candidate = {"source": "trial", "run_id": best["mlflow_run_id"], **best}
    tags = {"sweep": sweep_dir.name}
    if data_dir is not None:
        tags["dataset_digest"] = describe(data_dir)[0]
    decision = crown(cfg, candidate, shape, xv, train_model, tags=tags)

    outputs.write_tables(cfg, rows, ok, out)
    outputs.write_best_params(cfg, best, candidate, decision, sweep_dir.name, out)
    outputs.log_to_parent(cfg, ok, front, best, candidate, decision, sweep_dir.name, out)
    return {
        "name": sweep_dir.name,
        "parent_run_id": parent_id,
        "rows": rows,
        "best": best,
        "candidate": candidate,
        "champion": decision,
        "registered_version": decision["registered_version"],
        "out": str(out),
    }
