"""The training state a checkpoint holds (weights, EMA, optimizer, history), saved and read back
with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipelines.errors import LinearizerError

STATE_FILE = "state.pt"


def save_state(state: dict[str, Any], folder: str | Path) -> None:
    torch.save(state, Path(folder) / STATE_FILE)


def load_state_dir(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def checkpoint_state(ckpt: Any) -> dict[str, Any] | None:
    """The training state inside a Ray Train or Tune ``Checkpoint`` (``None`` for none)."""
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return load_state_dir(d)


def final_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights a training state hands on (evaluation, the saved and registered model): the
    EMA of the weights when the run kept one (``AveragedModel``'s state, ``module.`` prefixed),
    else the raw weights."""
    if "ema_state" not in state:
        return state["model"]
    prefix = "module."
    return {k[len(prefix) :]: v for k, v in state["ema_state"].items() if k.startswith(prefix)}


def load_result_state(result: Any) -> dict[str, Any]:
    """The rank-0 state of the latest checkpoint: weights (``model``, and ``ema_state`` when an
    EMA is kept; ``final_weights`` picks), optimizer, ``history`` per epoch."""
    state = checkpoint_state(result.checkpoint)
    if state is None:
        raise LinearizerError("the training run finished without a checkpoint")
    return state
