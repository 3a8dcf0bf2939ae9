"""MLflow set-up: the tracking URI and artifact folder made absolute, checked before heavy work.

Default: SQLite ``mlflow.db`` and ``mlartifacts/`` in the project (``mlflow ui`` shows them);
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` points at a server instead.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import MlflowConfig, output_path
from pipelines.errors import ServiceError

if TYPE_CHECKING:
    from pipelines.sampler import OneStepSampler

PIP_REQUIREMENTS = ["torch==2.13.0", "mlflow==3.17.2", "numpy", "pyarrow==25.0.1"]


def tracking_uri(cfg: MlflowConfig) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(
            output_path(uri.removeprefix("sqlite:///"), "mlflow.tracking_uri")
        )
    return uri


def artifact_location(cfg: MlflowConfig) -> str:
    if "://" in cfg.artifact_location:
        return cfg.artifact_location
    return output_path(cfg.artifact_location, "mlflow.artifact_location").as_uri()


def check_reachable(uri: str) -> None:
    """Fail fast, naming the URI, if runs could not be recorded there."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                if r.status != 200:
                    raise OSError(f"status {r.status}")
        except OSError as err:
            raise ServiceError(
                f"MLflow tracking server {uri} is unreachable ({err}); start it, fix "
                "mlflow.tracking_uri / MLFLOW_TRACKING_URI, or unset it to use sqlite:///mlflow.db"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ServiceError(f"MLflow database folder {folder} is missing or not writable")


def setup(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow

    uri = tracking_uri(cfg)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is None:
        exp_id = mlflow.create_experiment(cfg.experiment, artifact_location=artifact_location(cfg))
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def log_sampler_model(
    checkpoint_path: Path, sampler: OneStepSampler, *, registered_name: str | None = None
) -> str:
    """Log ``checkpoint_path`` as a code-defined pyfunc model; returns its model URI.

    ``sampler``, already built from the same weights, supplies the signature's example.
    """
    import mlflow
    import torch

    noise = torch.randn(2, *sampler.event_shape, generator=torch.Generator().manual_seed(0))
    out = sampler.from_noise(noise)
    noise = noise.reshape(2, -1).numpy()
    signature = mlflow.models.infer_signature(noise, out.reshape(2, -1).numpy())
    root = Path(__file__).resolve().parent.parent
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(root / "pipelines" / "mlflow_model.py"),
        artifacts={"checkpoint": str(checkpoint_path)},
        code_paths=[str(root / "lincore"), str(root / "pipelines")],
        signature=signature,
        input_example=noise,
        pip_requirements=PIP_REQUIREMENTS,
        registered_model_name=registered_name,
    )
    return info.model_uri
