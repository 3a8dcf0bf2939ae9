"""Where runs go: the tracking URI and artifact location made absolute, the store checked before
heavy work, the experiment set up, and the client settings Ray workers need.

Default: SQLite ``mlflow.db`` and ``mlartifacts/`` in the project (``mlflow ui`` shows them);
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` points at a server instead.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from pipelines.common.config import MlflowConfig, output_path
from pipelines.common.errors import ServiceError

# what the MLflow client reads for a server behind auth; Ray workers on other nodes need them too
CLIENT_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
)


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


def client_env() -> dict[str, str]:
    """The MLflow client settings of this process (credentials included) that Ray workers on
    other nodes need to log to the same server: the ones set among ``CLIENT_ENV``."""
    return {k: os.environ[k] for k in CLIENT_ENV if k in os.environ}
