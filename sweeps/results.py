"""What a finished sweep is worth: each trial scored on one-step samples and logged to its child
run, the Pareto front, the best configuration retrained at the full ``train.epochs`` budget and
registered only if it beats the current champion and the train stage's model, and the DVC
outputs (``trials.{csv,parquet}``, ``best_params.yaml``, ``pareto.{csv,png}``).

Every model the sweep compares (trials, the retrained candidate, the current ``@champion``,
``models/model.pt``) is scored by one function, ``score``: EMA weights, the sampler collapsed at
``evaluate.steps``, the first ``VAL_POINTS`` validation points, as many one-step samples drawn
from noise seed ``NOISE_SEED``. Its ``final_mmd`` is the training loop's ``val_mmd`` of the same
weights.
"""

from __future__ import annotations

import math
import sys
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
from pipelines.common.errors import LinearizerError
from pipelines.common.one_step_sampler import OneStepSampler
from pipelines.common.tracking.dataset import describe
from pipelines.training.state import final_weights
from sweeps import registry, trial
from sweeps.mlflow_runs import PARENT_TAG, ROLE_TAG, TRIAL_TAG, child_runs, data_params

VAL_POINTS = 512
"""Validation points the scores use: the first 512, as the training loop's ``val_mmd`` does
(``pipelines/training/loop.py``, ``xv[:512]``)."""
NOISE_SEED = 1234
"""The noise seed of the samples scored, the loop's ``val_mmd`` seed."""
CHAMPION_METRIC = "final_mmd"
"""What decides the champion: ``score``'s MMD (whatever ``sweep.metric`` ranks trials by;
``val_loss`` is not comparable across loss weights)."""
FINAL_METRICS = ("final_mmd", "final_swd", "final_energy", "samples_per_s")


@torch.no_grad()
def score(sampler: OneStepSampler, reference: np.ndarray) -> dict[str, float]:
    """One-step sample quality against held-out data, and the sampling cost: the one scoring
    function for every model a sweep compares (see the module's docstring)."""
    ref = torch.from_numpy(np.ascontiguousarray(reference[:VAL_POINTS]))
    x = sampler.sample(len(ref), seed=NOISE_SEED)
    seconds = median_seconds(lambda: sampler.sample(1000, seed=1), repeats=3)
    return {
        "final_mmd": mmd(x, ref),
        "final_swd": sliced_wasserstein(x, ref),
        "final_energy": energy_distance(x, ref),
        "samples_per_s": 1000 / seconds,
    }


def score_checkpoint(
    path: Path, steps: int, reference: np.ndarray, shape: tuple[int, ...]
) -> tuple[dict[str, float] | None, str]:
    """``(score, "")`` of a checkpoint written by ``checkpoints.save``, or ``(None, why not)``
    when it cannot be compared (another data shape, an unreadable file)."""
    from pipelines.common.errors import DataError

    try:
        model, state = checkpoints.load(path)
    except (DataError, RuntimeError) as err:
        return None, f"unreadable ({err})"
    if tuple(state["shape"]) != tuple(shape):
        return None, f"trained on data of shape {tuple(state['shape'])}, not {tuple(shape)}"
    return score(OneStepSampler(model, steps), reference), ""


def decide(candidate: float, others: dict[str, float | None]) -> tuple[bool, str]:
    """Whether the candidate (its ``CHAMPION_METRIC``) beats every existing contender in
    ``others`` (``None``: absent), lower being better; and why, in one line."""
    present = {k: v for k, v in others.items() if v is not None and math.isfinite(v)}
    if not math.isfinite(candidate):
        return False, f"the candidate's {CHAMPION_METRIC} is {candidate}"
    beaten = {k: v for k, v in present.items() if v <= candidate}
    if beaten:
        names = ", ".join(f"{k} ({v:.4f})" for k, v in beaten.items())
        return False, f"the candidate's {CHAMPION_METRIC} {candidate:.4f} does not beat {names}"
    if not present:
        return True, "no champion or train-stage model to beat"
    names = ", ".join(f"{k} ({v:.4f})" for k, v in present.items())
    return True, f"{CHAMPION_METRIC} {candidate:.4f} beats {names}"


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


def _sampler(state: dict[str, Any], tcfg: Config, shape: tuple[int, ...], steps: int) -> Any:
    model = OneStepFlowMatching.build(shape, tcfg.model, seed=tcfg.train.seed, steps=steps)
    model.load_state_dict(final_weights(state))
    return model, OneStepSampler(model, steps)


def _log_final(run_id: str, row: dict[str, Any], keys: tuple[str, ...] = FINAL_METRICS) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    final = [Metric(k, float(row[k]), now, 0) for k in keys if k in row]
    MlflowClient().log_batch(run_id, metrics=final)


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
        model, sampler = _sampler(state, tcfg, shape, cfg.evaluate.steps)
        model_path = sweep_dir / "models" / f"retrain-{trial_id}" / "model.pt"
        checkpoints.save(model_path, model, tcfg.model, shape, run_name=run_id, source="sweep")
        last = state["history"][-1]
        row = {
            "epochs": len(state["history"]),
            s.metric: float(last[s.metric]),
            "num_params": int(last.get("num_params", 0)),
            **score(sampler, xv),
        }
        _log_final(run_id, row, (*FINAL_METRICS, "num_params"))  # trials log it every epoch
        with mlflow.start_run(run_id=run_id, nested=True):  # FINISHED on leaving
            row["model_uri"] = tracking.log_sampler_model(model_path, sampler)
    return {**row, "run_id": run_id}


def contenders(
    cfg: Config, shape: tuple[int, ...], xv: np.ndarray, train_model: Path | None
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The current ``@champion`` and the train stage's model, scored like the candidate:
    ``({"champion": final_mmd | None, "train_model": ...}, details for best_params.yaml)``."""
    steps, values, details = cfg.evaluate.steps, {}, {}
    values["champion"], details["champion"] = None, None
    try:
        current = registry.champion(cfg.sweep.registry_name)
    except Exception as err:  # its artifacts are gone: nothing to defend the title with
        current = None
        details["champion"] = {"model": None, CHAMPION_METRIC: None, "note": f"unreadable: {err}"}
    if current is not None:
        version, path = current
        scores, why = score_checkpoint(path, steps, xv, shape)
        uri = f"models:/{cfg.sweep.registry_name}/{version}"
        details["champion"] = {"model": uri, CHAMPION_METRIC: None, "note": why}
        if scores is not None:
            values["champion"] = scores[CHAMPION_METRIC]
            details["champion"] = {"model": uri, CHAMPION_METRIC: scores[CHAMPION_METRIC]}
    values["train_model"], details["train_model"] = None, None
    if train_model is not None and train_model.is_file():
        scores, why = score_checkpoint(train_model, steps, xv, shape)
        details["train_model"] = {"model": str(train_model), CHAMPION_METRIC: None, "note": why}
        if scores is not None:
            values["train_model"] = scores[CHAMPION_METRIC]
            details["train_model"] = {
                "model": str(train_model),
                CHAMPION_METRIC: scores[CHAMPION_METRIC],
            }
    return values, details


def crown(
    cfg: Config,
    candidate: dict[str, Any],
    shape: tuple[int, ...],
    xv: np.ndarray,
    train_model: Path | None,
    *,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Register ``candidate`` (``final_mmd``, ``epochs``, ``model_uri``, ``run_id``, ...) as
    ``@champion`` only if it beats the current champion and ``train_model``, scored alike;
    otherwise the alias stays where it is. Returns the comparison, as ``best_params.yaml``
    records it, with ``registered``, ``registered_version`` and the ``reason``."""
    s = cfg.sweep
    others, details = contenders(cfg, shape, xv, train_model)
    wins, reason = decide(candidate.get(CHAMPION_METRIC, float("nan")), others)
    if candidate.get("error"):
        wins, reason = False, f"the candidate's training failed ({candidate['error']})"
    version = ""
    if wins and candidate.get("model_uri"):
        version = registry.register(
            candidate["model_uri"],
            s.registry_name,
            candidate.get("run_id", ""),
            tags={
                CHAMPION_METRIC: f"{candidate[CHAMPION_METRIC]:.6g}",
                "epochs": str(candidate["epochs"]),
                **(tags or {}),
            },
        )
    elif wins:
        wins, reason = False, "the candidate has no logged model (its MLflow run is missing)"
    return {
        "candidate": {
            "source": candidate.get("source", ""),
            "epochs": int(candidate["epochs"]),
            CHAMPION_METRIC: float(candidate.get(CHAMPION_METRIC, float("nan"))),
            s.metric: float(candidate.get(s.metric, float("nan"))),
            "mlflow_run_id": candidate.get("run_id", ""),
        },
        **details,
        "registered": wins,
        "registered_version": version,
        "reason": reason,
    }


def pick_best(cfg: Config, ok: list[dict[str, Any]]) -> dict[str, Any]:
    """The best trial by ``sweep.metric``, among those that trained the whole ``max_epochs``
    when there are any (a trial ASHA stopped was judged at a smaller budget); for the Pareto
    objective, among the front."""
    s = cfg.sweep
    pool = [r for r in ok if r["epochs"] >= s.max_epochs] or ok
    if s.objectives == "pareto":
        pool = [r for r in pool if r["pareto"]] or pool
    return min(pool, key=lambda r: r[s.metric])


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
    import mlflow
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

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
        model, sampler = _sampler(state, tcfg, shape, cfg.evaluate.steps)
        row.update({s.metric: float(state["history"][-1][s.metric]), **score(sampler, xv)})
        model_path = sweep_dir / "models" / trial_id / "model.pt"
        checkpoints.save(model_path, model, tcfg.model, shape, run_name=trial_id, source="sweep")
        if child is not None:
            _log_final(child.info.run_id, row)
            with mlflow.start_run(run_id=child.info.run_id, nested=True):
                row["model_uri"] = tracking.log_sampler_model(model_path, sampler)
        rows.append(row)

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
    version, reason = decision["registered_version"], decision["reason"]

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
            "budget_epochs": int(best["epochs"]),
            "max_epochs": s.max_epochs,
            "num_params": best["num_params"],
            "trial_id": best["trial_id"],
            "registered_version": version,
        },
        "champion": decision,
    }
    with atomic_path(out / "best_params.yaml") as tmp:
        tmp.write_text(
            f"# best trial of sweep {sweep_dir.name}: paste the sections into params.yaml\n"
            f"# objective: the trial's {s.metric} after {best['epochs']} epochs (its budget)\n"
            f"# champion: the candidate ({candidate['source']}, {candidate['epochs']} epochs) vs "
            f"the current @champion and the train stage's model,\n#   all scored alike "
            f"({CHAMPION_METRIC}: first {VAL_POINTS} validation points, noise seed "
            f"{NOISE_SEED}, EMA weights)\n" + yaml.safe_dump(best_params, sort_keys=False)
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
    mlflow.log_dict(decision, "champion.json")
    mlflow.log_metrics(
        {
            f"best_{s.metric}": best[s.metric],
            "best_num_params": best["num_params"],
            f"candidate_{CHAMPION_METRIC}": decision["candidate"][CHAMPION_METRIC],
        }
    )
    mlflow.set_tags(
        {
            "best_trial": best["trial_id"],
            "best_run_id": best["mlflow_run_id"],
            "candidate_run_id": candidate.get("run_id", ""),
            "champion_decision": reason[:5000],
        }
    )
    return {
        "name": sweep_dir.name,
        "parent_run_id": parent_id,
        "rows": rows,
        "best": best,
        "candidate": candidate,
        "champion": decision,
        "registered_version": version,
        "out": str(out),
    }
