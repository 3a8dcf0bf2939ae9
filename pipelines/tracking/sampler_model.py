"""The one-step sampler as an MLflow pyfunc model, logged as code (``mlflow_model.py``) with its
checkpoint: nothing is pickled."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipelines import requirements
from pipelines.config import ROOT

if TYPE_CHECKING:
    from pipelines.model.sampler import OneStepSampler

SERVING_PACKAGES = ("torch", "mlflow", "numpy", "pyarrow")
"""What the pyfunc model needs to load; their pins come from this project's own metadata
(``pyproject.toml``), the one place they are written."""


def serving_requirements() -> list[str]:
    """``SERVING_PACKAGES`` as ``pyproject.toml`` pins them (``torch==2.13.0``, ...)."""
    return requirements.pinned(SERVING_PACKAGES)


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
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).parent / "mlflow_model.py"),
        artifacts={"checkpoint": str(checkpoint_path)},
        code_paths=[str(ROOT / "lincore"), str(ROOT / "pipelines")],
        signature=signature,
        input_example=noise,
        pip_requirements=serving_requirements(),
        registered_model_name=registered_name,
    )
    return info.model_uri
