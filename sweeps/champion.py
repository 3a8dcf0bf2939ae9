"""The champion guard: a sweep's candidate is registered as ``@champion`` only if its score
beats the current champion's and the train stage's model's, all scored alike
(``sweeps.scoring``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Config
from sweeps import registry
from sweeps.scoring import score_checkpoint

CHAMPION_METRIC = "final_mmd"
"""What decides the champion: ``scoring.score``'s MMD (whatever ``sweep.metric`` ranks trials by;
``val_loss`` is not comparable across loss weights)."""


def decide(candidate: float, others: dict[str, float | None]) -> tuple[bool, str]:
    """Whether the candidate (its ``CHAMPION_METRIC``) beats every existing contender in
    ``others`` (``None``: absent), lower being better; and why, in one line."""
    present = {k: v for k, v in others.items() if v is not None and math.isfinite(v)}
    if not math.isfinite(candidate):
        return False, f"the candidate's {CHAMPION_METRIC} is {candidate}"
    beaten = {k: v for k, v in present.items() if v <= candidate}
    if beaten:
        names = ", ".join(f"{k} ({v:.4f})" for k, v in beaten.items())
        return False, f"the candidate's {CHAMPION_METRIC} {candidate:.4f} does not beat {names}"
    if not present:
        return True, "no champion or train-stage model to beat"
    names = ", ".join(f"{k} ({v:.4f})" for k, v in present.items())
    return True, f"{CHAMPION_METRIC} {candidate:.4f} beats {names}"


def contenders(
    cfg: Config, shape: tuple[int, ...], xv: np.ndarray, train_model: Path | None
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The current ``@champion`` and the train stage's model, scored like the candidate:
    ``({"champion": final_mmd | None, "train_model": ...}, details for best_params.yaml)``."""
    steps, values, details = cfg.evaluate.steps, {}, {}
    values["champion"], details["champion"] = None, None
    try:
        current = registry.champion(cfg.sweep.registry_name)
    except Exception as err:  # its artifacts are gone: nothing to defend the title with
        current = None
        details["champion"] = {"model": None, CHAMPION_METRIC: None, "note": f"unreadable: {err}"}
    if current is not None:
        version, path = current
        scores, why = score_checkpoint(path, steps, xv, shape)
        uri = f"models:/{cfg.sweep.registry_name}/{version}"
        details["champion"] = {"model": uri, CHAMPION_METRIC: None, "note": why}
        if scores is not None:
            values["champion"] = scores[CHAMPION_METRIC]
            details["champion"] = {"model": uri, CHAMPION_METRIC: scores[CHAMPION_METRIC]}
    values["train_model"], details["train_model"] = None, None
    if train_model is not None and train_model.is_file():
        scores, why = score_checkpoint(train_model, steps, xv, shape)
        details["train_model"] = {"model": str(train_model), CHAMPION_METRIC: None, "note": why}
        if scores is not None:
            values["train_model"] = scores[CHAMPION_METRIC]
            details["train_model"] = {
                "model": str(train_model),
                CHAMPION_METRIC: scores[CHAMPION_METRIC],
            }
    return values, details


def crown(
    cfg: Config,
    candidate: dict[str, Any],
    shape: tuple[int, ...],
    xv: np.ndarray,
    train_model: Path | None,
    *,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Register ``candidate`` (``final_mmd``, ``epochs``, ``model_uri``, ``run_id``, ...) as
    ``@champion`` only if it beats the current champion and ``train_model``, scored alike;
    otherwise the alias stays where it is. Returns the comparison, as ``best_params.yaml``
    records it, with ``registered``, ``registered_version`` and the ``reason``."""
    s = cfg.sweep
    others, details = contenders(cfg, shape, xv, train_model)
    wins, reason = decide(candidate.get(CHAMPION_METRIC, float("nan")), others)
    if candidate.get("error"):
        wins, reason = False, f"the candidate's training failed ({candidate['error']})"
    version = ""
    if wins and candidate.get("model_uri"):
        version = registry.register(
            candidate["model_uri"],
            s.registry_name,
            candidate.get("run_id", ""),
            tags={
                CHAMPION_METRIC: f"{candidate[CHAMPION_METRIC]:.6g}",
                "epochs": str(candidate["epochs"]),
                **(tags or {}),
            },
        )
    elif wins:
        wins, reason = False, "the candidate has no logged model (its MLflow run is missing)"
    return {
        "candidate": {
            "source": candidate.get("source", ""),
            "epochs": int(candidate["epochs"]),
            CHAMPION_METRIC: float(candidate.get(CHAMPION_METRIC, float("nan"))),
            s.metric: float(candidate.get(s.metric, float("nan"))),
            "mlflow_run_id": candidate.get("run_id", ""),
        },
        **details,
        "registered": wins,
        "registered_version": version,
        "reason": reason,
    }
