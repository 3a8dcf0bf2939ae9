"""The MLflow model, logged as code ("models from code"): nothing is pickled.

``mlflow.pyfunc.load_model(uri)`` rebuilds the generator from the logged checkpoint
(``weights_only=True``) and collapses its sampler, on the GPU when the serving process sees one
(else the CPU); ``predict(noise)`` returns one-step samples for a float32 array of noise
``(N, D)``, as a numpy array; ``.unwrap_python_model().sampler`` is our ``OneStepSampler``.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch


class OneStepSamplerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from pipelines.model.sampler import OneStepSampler

        self.sampler = OneStepSampler.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        # no type hints on purpose: MLflow would derive a (wrong) schema from them
        noise = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        x = self.sampler.from_noise(noise.reshape(len(noise), *self.sampler.event_shape))
        return x.reshape(len(x), -1).cpu().numpy()  # from_noise hands back CPU tensors


mlflow.models.set_model(OneStepSamplerModel())
