"""Validation at the public edges: every message names the argument, what it got, and the fix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_int(name: str, value: object, *, low: int, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_tensor(
    name: str, x: object, event_shape: Sequence[int], *, check_finite: bool = True
) -> Tensor:
    """Check a batch-first floating tensor of shape ``(B, *event_shape)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (float32/float64), got {x.dtype}")
    expected = tuple(event_shape)
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        want = "(B, " + ", ".join(str(d) for d in expected) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if check_finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; clean or clip the input first")
    return x


def as_condition(cond: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """Broadcast a domain condition (0 = noise, 1 = data) to a ``(B, 1)`` column like ``like``."""
    c = torch.as_tensor(cond, dtype=like.dtype, device=like.device)
    if c.dim() == 0:
        return c.expand(batch, 1)
    if c.shape != (batch,):
        raise ValueError(f"cond must be a number or a ({batch},) tensor, got {tuple(c.shape)}")
    return c.unsqueeze(1)
