"""Model checkpoints: a state dict plus the config that rebuilds the module.

Never a pickled module: ``torch.load(..., weights_only=True)`` refuses anything but tensors and
plain containers, so a malicious file cannot run code when it is loaded.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import torch

from lincore.generators import OneStepFlowMatching
from pipelines.atomic import atomic_path
from pipelines.config import ModelConfig
from pipelines.errors import DataError

LEGACY = {
    "operator": "low_rank",
    "w_one_step_likelihood": 0.0,
    "levels": 1,
    "pixels": "raw",
    "two_networks": False,
}
"""Values of the keys that checkpoints written before they existed (or before their default
became ``auto``) were trained with."""


def save(
    path: str | Path,
    model: OneStepFlowMatching,
    cfg: ModelConfig,
    shape: tuple[int, ...],
    **extra: Any,
) -> None:
    state = {
        "state_dict": model.state_dict(),
        "model_config": dataclasses.asdict(cfg),
        "shape": list(shape),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True``; clear errors for bad files."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"model checkpoint {p} not found; run `dvc repro train` first")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise DataError(
            f"{p} was refused: it is not a plain weights file ({str(err).splitlines()[0]}); "
            "only checkpoints written by this project load"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise DataError(f"{p} is not a readable checkpoint ({err})") from None
    if not isinstance(state, dict) or not {"state_dict", "model_config", "shape"} <= set(state):
        raise DataError(f"{p} is not a linearizer checkpoint (state_dict/model_config missing)")
    return state


def load(path: str | Path) -> tuple[OneStepFlowMatching, dict[str, Any]]:
    """``(model in eval mode, checkpoint dict)`` from a file written by ``save``."""
    state = load_state(path)
    # checkpoints written before model.operator existed hold the original rank-only A_t, trained
    # without the one-step likelihood term (which that operator cannot have)
    cfg = ModelConfig(**{**LEGACY, **state["model_config"]})
    model = OneStepFlowMatching.build(tuple(state["shape"]), cfg)
    model.load_state_dict(state["state_dict"])
    return model.eval(), state
