"""The MLflow Model Registry entry of a sweep's best model: one stable name, ours alone.

A registered name carries the tag ``linearizer.kind``; a name that exists without it belongs to
another model and is refused before any trial starts (registering into it would mix models).
The alias ``champion`` moves only to a model that scores better than the current one
(``sweeps.results`` decides); each version records its score and the budget it trained for.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import ConfigError

KIND_TAG, KIND = "linearizer.kind", "one-step-sampler"
ALIAS = "champion"


def claim(name: str) -> None:
    """Create ``name`` for our sampler, or check that it already is ours."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            tags={KIND_TAG: KIND},
            description="One-step Linearizer sampler: best trial of `python -m sweeps`, "
            "retrained at the full train.epochs budget.",
        )
        return
    if model.tags.get(KIND_TAG) != KIND:
        raise ConfigError(
            f"the MLflow registered model name {name!r} is already bound to another model "
            f"(no {KIND_TAG}={KIND} tag); choose another sweep.registry_name"
        )


def champion(name: str) -> tuple[str, Path] | None:
    """``(version, local checkpoint file)`` of ``models:/<name>@champion``, or ``None`` when
    the alias is not set. The checkpoint is the model's own ``model.pt`` artifact (a state dict,
    loaded with ``weights_only=True``), not the pyfunc model: loading that would put its logged
    copy of the code on ``sys.path``."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{ALIAS}"))
    found = sorted((folder / "artifacts").glob("*.pt")) or sorted(folder.rglob("*.pt"))
    return (str(version.version), found[0]) if found else None


def register(model_uri: str, name: str, run_id: str, tags: dict[str, str] | None = None) -> str:
    """A new version of ``name`` from ``model_uri``, aliased ``champion``; returns the version.
    Call it only for a model that beat the current champion (``sweeps.champion.decide``)."""
    import mlflow
    from mlflow import MlflowClient

    version = mlflow.register_model(
        model_uri, name, tags={"run_id": run_id, **(tags or {})}
    ).version
    MlflowClient().set_registered_model_alias(name, ALIAS, version)
    return str(version)
