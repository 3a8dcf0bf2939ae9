"""Every model a sweep compares, scored alike: each trial's final weights, the retrained
candidate, the current ``@champion`` and the train stage's ``models/model.pt``.

The score is ``pipelines.evaluation.quality.score`` (the training loop's validation score) of the
EMA weights with the sampler collapsed at ``evaluate.steps``, as ``final_*`` metrics, plus the
sampling throughput: a trial's ``final_mmd`` equals the ``val_mmd`` its last epoch logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lincore.generators import OneStepFlowMatching
from lincore.metrics import median_seconds
from pipelines.config import Config
from pipelines.errors import DataError
from pipelines.evaluation import quality
from pipelines.model import checkpoints
from pipelines.model.sampler import OneStepSampler
from pipelines.training.state import final_weights

FINAL_METRICS = (
    "final_mmd",
    "final_swd",
    "final_energy",
    "final_inversion_energy",
    "samples_per_s",
)
"""What ``score`` returns; logged to each compared model's MLflow run."""


@torch.no_grad()
def score(sampler: OneStepSampler, reference: np.ndarray) -> dict[str, float]:
    """``quality.score`` against held-out ``reference`` rows as ``final_*``, and the one-step
    throughput (samples per second, median of three batches of 1,000)."""
    scores = {f"final_{k}": v for k, v in quality.score(sampler, reference).items()}
    seconds = median_seconds(lambda: sampler.sample(1000, seed=1), repeats=3)
    return {**scores, "samples_per_s": 1000 / seconds}


def score_checkpoint(
    path: Path, steps: int, reference: np.ndarray, shape: tuple[int, ...]
) -> tuple[dict[str, float] | None, str]:
    """``(score, "")`` of a checkpoint written by ``checkpoints.save``, or ``(None, why not)``
    when it cannot be compared (another data shape, an unreadable file)."""
    try:
        model, state = checkpoints.load(path)
    except (DataError, RuntimeError) as err:
        return None, f"unreadable ({err})"
    if tuple(state["shape"]) != tuple(shape):
        return None, f"trained on data of shape {tuple(state['shape'])}, not {tuple(shape)}"
    return score(OneStepSampler(model, steps), reference), ""


def trained_sampler(
    state: dict[str, Any], tcfg: Config, shape: tuple[int, ...], steps: int
) -> tuple[OneStepFlowMatching, OneStepSampler]:
    """The model of a training result's final state (its EMA weights when it kept them) and its
    sampler collapsed at ``steps``."""
    model = OneStepFlowMatching.build(shape, tcfg.model, seed=tcfg.train.seed, steps=steps)
    model.load_state_dict(final_weights(state))
    return model, OneStepSampler(model, steps)
