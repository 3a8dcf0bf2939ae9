"""A finished sweep's outputs: the DVC files (``trials.{csv,parquet}``, ``best_params.yaml``,
``pareto.{csv,png}``) and what the sweep's parent MLflow run shows of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import figures
from pipelines.atomic import atomic_path, write_atomic, write_csv
from pipelines.config import Config
from pipelines.evaluation.quality import NOISE_SEED, SCORE_ROWS
from sweeps.champion import CHAMPION_METRIC
from sweeps.scoring import FINAL_METRICS


def nested(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"model.rank": 8}`` -> ``{"model": {"rank": 8}}``: paste into params.yaml."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in sorted(params.items()):
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value.item() if hasattr(value, "item") else value
    return out


def columns(cfg: Config) -> list[str]:
    """The columns of ``trials.csv`` and ``trials.parquet``."""
    s = cfg.sweep
    return [
        "trial_id",
        *s.space,
        "status",
        "epochs",
        s.metric,
        *(m for m in FINAL_METRICS if m != "samples_per_s"),  # the quality scores, then size
        "num_params",
        "samples_per_s",
        "pareto",
        "mlflow_run_id",
    ]


def write_tables(
    cfg: Config, rows: list[dict[str, Any]], ok: list[dict[str, Any]], out: Path
) -> None:
    """``trials.csv`` and ``trials.parquet`` (every trial), ``pareto.csv`` (the finished ones)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = columns(cfg)
    write_csv(out / "trials.csv", rows, cols)
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    write_atomic(out / "trials.parquet", lambda p: pq.write_table(table, p))
    write_csv(
        out / "pareto.csv",
        [{**r, "objective": r[cfg.sweep.metric]} for r in ok],
        ["num_params", "objective", "pareto", "trial_id"],
    )


def write_best_params(
    cfg: Config,
    best: dict[str, Any],
    candidate: dict[str, Any],
    decision: dict[str, Any],
    sweep_name: str,
    out: Path,
) -> None:
    """``best_params.yaml``: the best trial's sections, ready to paste into params.yaml, with its
    objective and the champion decision."""
    import yaml

    s = cfg.sweep
    best_params = {
        **nested({k: best[k] for k in s.space}),
        "objective": {
            s.metric: best[s.metric],
            "budget_epochs": int(best["epochs"]),
            "max_epochs": s.max_epochs,
            "num_params": best["num_params"],
            "trial_id": best["trial_id"],
            "registered_version": decision["registered_version"],
        },
        "champion": decision,
    }
    with atomic_path(out / "best_params.yaml") as tmp:
        tmp.write_text(
            f"# best trial of sweep {sweep_name}: paste the sections into params.yaml\n"
            f"# objective: the trial's {s.metric} after {best['epochs']} epochs (its budget)\n"
            f"# champion: the candidate ({candidate['source']}, {candidate['epochs']} epochs) vs "
            f"the current @champion and the train stage's model,\n#   all scored alike "
            f"({CHAMPION_METRIC}: first {SCORE_ROWS} validation points, noise seed "
            f"{NOISE_SEED}, EMA weights)\n" + yaml.safe_dump(best_params, sort_keys=False)
        )


def log_to_parent(
    cfg: Config,
    ok: list[dict[str, Any]],
    front: list[bool],
    best: dict[str, Any],
    candidate: dict[str, Any],
    decision: dict[str, Any],
    sweep_name: str,
    out: Path,
) -> None:
    """The Pareto figure (also ``pareto.png``), the trials table, the champion decision and the
    best figures, in the active (parent) MLflow run."""
    import mlflow

    s = cfg.sweep
    fig = figures.pareto(
        [r["num_params"] for r in ok],
        [r[s.metric] for r in ok],
        front,
        xlabel="parameters (log)",
        ylabel=f"{s.metric} (one-step, lower is better)",
        labels=[f"r{r.get('model.rank', '')} d{r.get('model.depth', '')}" for r in ok],
        title=f"{sweep_name}: one-step quality vs model size",
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
            "champion_decision": decision["reason"][:5000],
        }
    )
