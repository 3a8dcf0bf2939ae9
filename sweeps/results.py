"""What a finished sweep is worth: each trial scored on one-step samples, the Pareto front, the
best parameters as a params.yaml fragment."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lincore.metrics import energy_distance, median_seconds, mmd, sliced_wasserstein
from pipelines.sampler import OneStepSampler


@torch.no_grad()
def score(sampler: OneStepSampler, reference: np.ndarray) -> dict[str, float]:
    """One-step sample quality against held-out data, and the sampling cost."""
    ref = torch.from_numpy(reference)
    x = sampler.sample(len(ref), seed=1234)
    seconds = median_seconds(lambda: sampler.sample(1000, seed=1), repeats=3)
    return {
        "final_mmd": mmd(x, ref),
        "final_swd": sliced_wasserstein(x, ref),
        "final_energy": energy_distance(x, ref),
        "samples_per_s": 1000 / seconds,
    }


def pareto_front(points: list[tuple[float, ...]]) -> list[bool]:
    """``True`` where no other point is at least as good everywhere and better somewhere
    (every objective minimised)."""

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b

    return [
        not any(dominates(q, p) for q in points if q is not p) and all(map(math.isfinite, p))
        for p in points
    ]


def nested(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"model.rank": 8}`` -> ``{"model": {"rank": 8}}``: paste into params.yaml."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in sorted(params.items()):
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value.item() if hasattr(value, "item") else value
    return out
