"""2-D toy distributions, generated (never downloaded), deterministic for a seed.

Each is roughly standardised (mean ~0, std ~1 per axis) so one noise scale fits all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lincore._checks import check_int


def moons(n: int, gen: torch.Generator, noise: float = 0.05) -> Tensor:
    """Two interleaved half circles (scikit-learn's ``make_moons`` shape)."""
    a = torch.rand(n, generator=gen, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=gen) < 0.5
    x = torch.where(upper, a.cos(), 1 - a.cos())
    y = torch.where(upper, a.sin(), 0.5 - a.sin())
    pts = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return (pts - torch.tensor([0.5, 0.25], dtype=torch.float64)) / torch.tensor(
        [0.87, 0.5], dtype=torch.float64
    )


def checkerboard(n: int, gen: torch.Generator) -> Tensor:
    """Uniform on the black squares of a 4x4 board on ``[-2, 2]^2``."""
    x = torch.rand(n, generator=gen, dtype=torch.float64) * 4 - 2
    i = torch.randint(0, 2, (n,), generator=gen).to(torch.float64)
    y = torch.rand(n, generator=gen, dtype=torch.float64) - 2 * i + (x.floor() % 2)
    return torch.stack([x, y], 1) / 1.15


def eight_gaussians(n: int, gen: torch.Generator, std: float = 0.1) -> Tensor:
    """Eight Gaussians on a circle."""
    k = torch.randint(0, 8, (n,), generator=gen).to(torch.float64)
    centres = torch.stack([(k * math.pi / 4).cos(), (k * math.pi / 4).sin()], 1)
    pts = centres * 2 + std * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return pts / 1.42


def spirals(n: int, gen: torch.Generator, noise: float = 0.1) -> Tensor:
    """Two interleaved spirals."""
    r = torch.rand(n, generator=gen, dtype=torch.float64).sqrt() * 3 * math.pi
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    pts = sign[:, None] * torch.stack([-r.cos() * r, r.sin() * r], 1)
    pts = pts + noise * torch.randn(n, 2, generator=gen, dtype=torch.float64) * 3
    return pts / 5.0


TOYS: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "moons": moons,
    "checkerboard": checkerboard,
    "eight_gaussians": eight_gaussians,
    "spirals": spirals,
}


def toy(name: str, n: int, *, seed: int = 0) -> Tensor:
    """``n`` float64 points ``(n, 2)`` of the named toy distribution.

    >>> toy("moons", 3, seed=0).shape
    torch.Size([3, 2])
    """
    if name not in TOYS:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {sorted(TOYS)}")
    check_int("n", n, low=1)
    return TOYS[name](n, torch.Generator().manual_seed(seed))
