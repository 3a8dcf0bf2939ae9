"""Spherical interpolation of noise: a straight line between two Gaussian draws passes through
atypically small noise, an arc keeps it at its typical norm."""

from __future__ import annotations

import torch
from torch import Tensor


def slerp(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """Spherical interpolation of rows of noise (it keeps Gaussian noise at its typical norm,
    where a straight line would pass through atypically small noise)."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))[:, None]
    mix = (torch.sin((1 - alpha) * omega) * fa + torch.sin(alpha * omega) * fb) / torch.sin(omega)
    return mix.reshape(a.shape)
