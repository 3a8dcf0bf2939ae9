"""Data-dependent initialisation through any nest of blocks: every ActNorm sees the activations
that reach it, in order, so each leaves with zero mean and unit variance on the batch."""

from __future__ import annotations

import torch
from torch import Tensor

from lincore.inn.actnorm import ActNorm
from lincore.inn.base import InvertibleBlock, InvertibleSequential
from lincore.inn.multiscale import ScaleLevel


@torch.no_grad()
def initialize_through(block: InvertibleBlock, x: Tensor, cond: Tensor | None) -> Tensor:
    """Run ``x`` through ``block``, initialising the not-yet-initialised ActNorms on the way;
    returns the block's output."""
    if isinstance(block, InvertibleSequential):
        for b in block.blocks:
            x = initialize_through(b, x, cond)
        return x
    if isinstance(block, ScaleLevel):
        return block.initialize_from(x, cond)
    if isinstance(block, ActNorm) and not bool(block.initialized):
        block.initialize_from(x.detach())
    return block(x, cond=cond)
