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
    metrics_rows: list[dict],
    images: dict[str, np.ndarray],
    *,
    grid: int,
    points: np.ndarray | None,
) -> dict[str, Any]:
    """The evaluation's figures by file name: a sample grid (a scatter over ``points`` for
    2-D data), an interpolation strip, and one-step vs multi-step PSNR by steps."""
    samples = images["samples"]
    shown = samples[:grid] if samples.ndim > 2 else samples
    rows = metrics_rows
    return {
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


def log_to_run(
    mlflow_cfg: MlflowConfig,
    run_id: str,
    metrics: dict[str, float],
    rows: list[dict],
    figs: dict[str, Any],
) -> None:
    """The metrics (as ``test_*``), the PSNR by steps and the figures, in the training run."""
    import mlflow

    tracking.setup(mlflow_cfg)
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
) -> dict[str, float | str]:
    """The figures as PNGs and ``steps.csv`` under ``plots``, and ``metrics.json`` (a value
    JSON cannot hold, such as nan, as its text), each written atomically; returns what
    ``metrics.json`` holds."""
    for name, fig in figs.items():
        figures.save_png(fig, plots / name)
    write_csv(plots / "steps.csv", rows, list(rows[0]))
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
