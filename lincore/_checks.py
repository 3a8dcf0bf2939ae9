"""Validation at the public edges: every message names the argument, what it got, and the fix.

Shape, dtype and type checks read only metadata and always run. The checks that read tensor
*values* (NaN/inf input, an ActNorm left uninitialised, a singular solve) make a GPU wait for
the host: they run at the user-facing edges and are skipped inside ``unchecked()``, which the
training loop wraps around its forward passes (its own finiteness watch covers the loss).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

_VALUE_CHECKS: ContextVar[bool] = ContextVar("lincore_value_checks", default=True)


def value_checks() -> bool:
    """Whether the checks that read tensor values (a host sync on a GPU) run here."""
    return _VALUE_CHECKS.get()


@contextmanager
def unchecked() -> Iterator[None]:
    """Skip the value checks (NaN/inf input, ActNorm initialised, singular solves) inside this
    block, in this thread or task: each one is a GPU -> host sync. For hot loops whose inputs
    were validated once at their edge; shape and dtype checks still run."""
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


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
    if check_finite and _VALUE_CHECKS.get() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; clean or clip the input first")
    return x


def as_condition(cond: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """Broadcast a domain condition (0 = noise, 1 = data) to a ``(B, 1)`` column like ``like``."""
    if isinstance(cond, int | float):  # filled on the device: no host -> device copy (a sync)
        return like.new_full((batch, 1), float(cond))
    c = torch.as_tensor(cond, dtype=like.dtype, device=like.device)
    if c.dim() == 0:
        return c.expand(batch, 1)
    if c.shape != (batch,):
        raise ValueError(f"cond must be a number or a ({batch},) tensor, got {tuple(c.shape)}")
    return c.unsqueeze(1)
