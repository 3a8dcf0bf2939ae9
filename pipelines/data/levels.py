"""Grey levels and their dequantisation: ``(level + u) / bins``, a density on ``[0, 1]^D``
instead of ``bins`` spikes per value, so bits/dim per bin compares with published figures.

Two kinds of noise ``u``: fixed by the row (``dequantise``: sources, evaluation, validation; the
same values whatever the batch) and fresh per batch (``fresh_dequantise``: training).
"""

from __future__ import annotations

import numpy as np
import torch

NOISE_BLOCK_ELEMENTS = 2**18
"""Values of dequantisation noise drawn from one generator: rows are grouped in blocks of about
this many values, each block with its own generator seeded by ``(seed, first row)``."""


def noise_block_rows(dim: int) -> int:
    """Rows per noise block for samples of ``dim`` values: fixed by the data, not the reader, so
    that a chunk size that is a multiple of it wastes no noise (any other size is still exact)."""
    return max(1, NOISE_BLOCK_ELEMENTS // max(dim, 1))


def dequantise(levels: np.ndarray, start: int, bins: int, seed: int) -> np.ndarray:
    """``(level + u) / bins``, ``u ~ U[0, 1)``, for the rows ``start, start + 1, ...`` of a data
    set: a density on ``[0, 1]^D`` instead of ``bins`` spikes per value, so bits/dim per bin
    compares with published figures. Each value stays in its own bin (``floor(x * bins)`` is
    its level) and below 1."""
    n = len(levels)
    dim = int(np.prod(levels.shape[1:], dtype=np.int64))
    block = noise_block_rows(dim)
    u = np.empty((n, dim), dtype=np.float32)
    for lo in range(start - start % block, start + n, block):
        noise = np.random.default_rng((seed, lo)).random((block, dim), dtype=np.float32)
        a, b = max(start, lo), min(start + n, lo + block)
        u[a - start : b - start] = noise[a - lo : b - lo]
    level = levels.reshape(n, dim).astype(np.float32)
    # level + u may round up to level + 1 in float32: keep it in its bin
    s = np.minimum(level + u, np.nextafter(level + 1, np.float32(0)))
    return (s / np.float32(bins)).reshape(levels.shape)


def fresh_dequantise(levels: torch.Tensor, bins: int, generator: torch.Generator) -> torch.Tensor:
    """``(level + u) / bins`` with new ``u ~ U[0, 1)`` from ``generator`` (on the levels'
    device): training sees every image with fresh noise each epoch, a density rather than the
    one fixed sample of each pixel's bin that a stored float32 split would give."""
    u = torch.rand(levels.shape, generator=generator, device=levels.device)
    return (levels.float() + u.clamp(max=1 - 2**-24)) / bins
