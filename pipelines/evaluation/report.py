"""What a reader sees of an evaluation: the figures, ``metrics.json`` and ``plots/steps.csv``
for DVC, the same in the training run in MLflow, and a summary on the terminal."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines import figures, tracking
from pipelines.atomic import write_csv, write_json
from pipelines.config import MlflowConfig


def draw(
    rows: list[dict],
    images: dict[str, np.ndarray],
    *,
    grid: int,
    points: np.ndarray | None,
) -> dict[str, Any]:
    """The evaluation's figures by file name: a sample grid (a scatter over ``points`` for
    2-D data), an interpolation strip, and one-step vs multi-step PSNR by steps."""
    samples = images["samples"]
    shown = samples[:grid] if samples.ndim > 2 else samples
    figs = {
        "samples.png": figures.samples(shown, reference=points, title="one-step samples"),
        "interpolation.png": figures.interpolation(
            images["interpolation"], title="interpolation through the noise (one step each)"
        ),
        "steps.png": figures.curves(
            [r["steps"] for r in rows],
            {"one-step vs multi-step PSNR (dB)": [r["psnr_one_vs_multi"] for r in rows]},
            xlabel="sampler steps T",
            ylabel="PSNR (dB)",
            log_x=True,
            title="the collapse is exact at every T",
        ),
    }
    return figs | direction_figures(images)


def direction_figures(images: dict[str, Any]) -> dict[str, Any]:
    """The principal directions' pictures (``evaluation.directions``), when the evaluation has
    them: a strip per direction and the rank-``k`` generators."""
    if "directions" not in images:  # a dense B too large to decompose: say so, in both files
        why = "no principal directions: the collapsed sampler is dense (its SVD costs D^3)"
        return {name: figures.note(why) for name in ("directions.png", "rank_k.png")}
    return {
        "directions.png": directions_figure(images["directions"], images["direction_values"]),
        "rank_k.png": rank_k_figure(images["rank_k"], images["rank_ks"]),
    }


def directions_figure(strips: np.ndarray, values: np.ndarray) -> Any:
    """A row per principal direction ``v_i`` (its singular value in the label), a column per
    move of the noise along it."""
    from pipelines.evaluation.directions import AMOUNTS

    return figures.labelled_rows(
        strips,
        row_labels=[f"v{i + 1} (s={s:.3g})" for i, s in enumerate(values)],
        col_labels=[f"{a:+g}" for a in AMOUNTS],
        title="one sample moved along each principal direction of B (noise std units)",
    )


def rank_k_figure(samples: np.ndarray, ks: np.ndarray) -> Any:
    """A row per rank ``k`` (the last is the full generator), a column per noise."""
    return figures.labelled_rows(
        samples,
        row_labels=[f"k={k}" for k in ks],
        col_labels=[f"#{j + 1}" for j in range(samples.shape[1])],
        title="the same noise through the rank-k generator (top k directions kept)",
    )


TRAIN_RUN_TAG = "linearizer.train_run"
"""On an evaluation's own run: the id of the train run of its model, kept in another store."""


def log_to_run(
    mlflow_cfg: MlflowConfig,
    run_id: str,
    metrics: dict[str, float],
    rows: list[dict],
    figs: dict[str, Any],
) -> None:
    """The metrics (as ``test_*``), the PSNR by steps and the figures, in the training run.

    A model trained elsewhere (a colleague's ``dvc pull``, whose train run lives in another
    tracking store) gets a run of its own, tagged with the train run's id, instead of a stack
    trace from MLflow."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.setup(mlflow_cfg)
    try:
        mlflow.MlflowClient().get_run(run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise  # a refusing or failing server is not a missing run
        here = tracking.tracking_uri(mlflow_cfg)
        new = mlflow.start_run(run_name="evaluate", tags={TRAIN_RUN_TAG: run_id})
        mlflow.end_run()
        print(
            f"the train run {run_id} is not in this tracking store ({here}): the model was "
            f"trained against another one (dvc pull). Logged to a new run {new.info.run_id}, "
            f"tagged {TRAIN_RUN_TAG}; share one tracking server (mlflow.tracking_uri) to keep "
            "them together"
        )
        run_id = new.info.run_id
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if math.isfinite(v)})
        for row in rows:
            mlflow.log_metric(
                "test_psnr_one_vs_multi_by_steps", row["psnr_one_vs_multi"], step=row["steps"]
            )
        for name, fig in figs.items():
            mlflow.log_figure(fig, f"evaluate/{name}")


def write_outputs(
    metrics: dict[str, float],
    rows: list[dict],
    figs: dict[str, Any],
    *,
    metrics_path: Path,
    plots: Path,
    spectrum: list[dict] | None = None,
) -> dict[str, float | str]:
    """The figures as PNGs, ``steps.csv`` and ``spectrum.csv`` (the collapsed sampler's singular
    values, when there are any) under ``plots``, and ``metrics.json`` (a value JSON cannot hold,
    such as nan, as its text), each written atomically; returns what ``metrics.json`` holds."""
    for name, fig in figs.items():
        figures.save_png(fig, plots / name)
    write_csv(plots / "steps.csv", rows, list(rows[0]))
    write_csv(plots / "spectrum.csv", spectrum or [], ["direction", "singular_value"])
    out = {k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}
    write_json(metrics_path, out)
    return out


def print_summary(out: dict[str, float | str]) -> None:
    width = max(len(k) for k in out)
    print(
        "\n".join(
            f"  {k:<{width}}  {v:.6g}" if isinstance(v, float) else f"  {k:<{width}}  {v}"
            for k, v in out.items()
        )
    )
