"""Where runs go: the tracking URI and artifact location made absolute, the store checked before
heavy work, the experiment set up, and the client settings Ray workers need.

Default: SQLite ``mlflow.db`` and ``mlartifacts/`` in the project (``mlflow ui`` shows them);
``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` points at a server instead. A new experiment on
a tracking server gets the server's own artifact location (``mlflow server
--artifacts-destination DIR``: artifacts go through the server as ``mlflow-artifacts:``), never a
folder of the client's; ``mlflow.artifact_location`` counts there only when it is a URI.
"""

from __future__ import annotations

import base64
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from pipelines.config import MlflowConfig, output_path
from pipelines.errors import ServiceError

# what the MLflow client reads for a server behind auth; Ray workers on other nodes need them too
MLFLOW_ENV = (
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


AUTH_ENV = "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""what the experiment holds: MLflow's UI then opens it on its training runs, not on the GenAI
overview it infers for an experiment without the tag"""


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def artifact_location(cfg: MlflowConfig, uri: str | None = None) -> str | None:
    """Where a new experiment's artifacts go: ``None`` (the server decides) on a tracking
    server ``uri``, unless ``mlflow.artifact_location`` is a URI; else ``mlartifacts/`` (or the
    configured folder) in the project, as a ``file://`` URI."""
    if "://" in cfg.artifact_location:
        return cfg.artifact_location
    if uri is not None and is_server(uri):
        return None  # a client folder would be a path on the wrong machine
    return output_path(cfg.artifact_location, "mlflow.artifact_location").as_uri()


def _health_request(uri: str) -> tuple[urllib.request.Request, ssl.SSLContext | None]:
    """``GET /health`` with the credentials the MLflow client itself would send."""
    headers = {}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    context = None
    if uri.startswith("https://"):
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
            context = ssl._create_unverified_context()  # the user's explicit choice, as MLflow
        elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            context = ssl.create_default_context(
                cafile=os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
            )
    return urllib.request.Request(uri.rstrip("/") + "/health", headers=headers), context


def check_reachable(uri: str) -> None:
    """Fail fast, naming the URI, if runs could not be recorded there."""
    if is_server(uri):
        request, context = _health_request(uri)
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as r:
                if r.status != 200:
                    raise OSError(f"status {r.status}")
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                raise ServiceError(
                    f"MLflow tracking server {uri} answered HTTP {err.code}: it wants other "
                    f"credentials; set {AUTH_ENV} (MLFLOW_TRACKING_INSECURE_TLS=true only for a "
                    "self-signed certificate)"
                ) from None
            raise ServiceError(
                f"MLflow tracking server {uri} answered HTTP {err.code} on /health; check "
                "mlflow.tracking_uri / MLFLOW_TRACKING_URI"
            ) from None
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
        exp_id = mlflow.create_experiment(
            cfg.experiment,
            artifact_location=artifact_location(cfg, uri),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    else:
        exp_id = exp.experiment_id
        kind = exp.tags.get(EXPERIMENT_KIND_TAG, "")
        if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":
            mlflow.MlflowClient(uri).set_experiment_tag(
                exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id
