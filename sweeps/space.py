"""``sweep.space`` from params.yaml into Ray Tune distributions, checked against the data."""

from __future__ import annotations

from typing import Any

from pipelines.config import SweepConfig, check_rank


def tune_space(space: dict[str, dict[str, list]]) -> dict[str, Any]:
    """``{"model.rank": {"choice": [2, 4]}}`` -> ``{"model.rank": tune.choice([2, 4])}``.

    The keys stay dotted, so trial params carry the same names as the train stage's MLflow
    params (``model.rank``) and the runs line up in one comparison.
    """
    from ray import tune

    make = {
        "choice": lambda v: tune.choice(v),
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
        "randint": lambda v: tune.randint(v[0], v[1] + 1),  # bounds inclusive, as written
    }
    return {key: make[dist](values) for key, spec in space.items() for dist, values in spec.items()}


def check_against_data(sweep: SweepConfig, shape: tuple[int, ...]) -> None:
    """A rank outside ``1..D`` cannot be built: refuse it before trials start."""
    spec = sweep.space.get("model.rank")
    if spec is None:
        return
    ((dist, values),) = spec.items()
    for rank in (min(values), max(values)):
        check_rank(int(rank), shape, key=f"sweep.space.model.rank.{dist}")
