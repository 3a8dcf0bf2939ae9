"""The MLflow Model Registry entry of a sweep's best model: one stable name, ours alone.

A registered name carries the tag ``linearizer.kind``; a name that exists without it belongs to
another model and is refused before any trial starts (registering into it would mix models).
"""

from __future__ import annotations

from pipelines.common.errors import ConfigError

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
            description="One-step Linearizer sampler: best trial of `python -m sweeps`.",
        )
        return
    if model.tags.get(KIND_TAG) != KIND:
        raise ConfigError(
            f"the MLflow registered model name {name!r} is already bound to another model "
            f"(no {KIND_TAG}={KIND} tag); choose another sweep.registry_name"
        )


def register(model_uri: str, name: str, run_id: str) -> str:
    """A new version of ``name`` from ``model_uri``, aliased ``champion``; returns the version."""
    import mlflow
    from mlflow import MlflowClient

    version = mlflow.register_model(model_uri, name, tags={"run_id": run_id}).version
    MlflowClient().set_registered_model_alias(name, ALIAS, version)
    return str(version)
