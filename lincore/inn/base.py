"""The contract every invertible network in lincore honours.

``forward`` is data -> latent and ``inverse`` is latent -> data (no ``rev=`` flags). A block may
take a *domain condition* ``cond`` (0 = noise, 1 = data) so that one network with shared weights
can serve as both ``g_x`` and ``g_y`` of a generator.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class FlowOutput:
    """The image of a batch and the log|det J| of the map at each sample, shape ``(B,)``."""

    out: Tensor
    log_det: Tensor


class InvertibleBlock(nn.Module, ABC):
    """A bijection with an exact inverse and a tractable log-determinant."""

    @abstractmethod
    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        """Apply the forward map and return log|det dF/dx| per sample."""

    @abstractmethod
    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        """Apply the exact inverse map."""

    def forward(self, x: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return self.forward_and_log_det(x, cond=cond).out


class Inverse(InvertibleBlock):
    """A block run backwards: used for the un-squeeze that closes an image flow."""

    def __init__(self, block: InvertibleBlock) -> None:
        super().__init__()
        self.block = block

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        z = self.block.inverse(x, cond=cond)
        # log|det J_{F^-1}(x)| = -log|det J_F(F^-1(x))|
        return FlowOutput(z, -self.block.forward_and_log_det(z, cond=cond).log_det)

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        return self.block(z, cond=cond)


class InvertibleSequential(InvertibleBlock):
    """Blocks in order forward, in reverse order backwards; log-determinants add up.

    With ``recompute`` on (``set_recompute``) and gradients enabled, each run of ``group``
    consecutive blocks (1: each block; 3: a coupling step of ActNorm, coupling and 1x1 conv)
    keeps only its input for the backward pass and recomputes its inner activations there
    (non-reentrant ``torch.utils.checkpoint``: safe when one loss runs ``g`` several times, and
    DDP sees every parameter once). The conditioners' hidden activations dominate a step's
    memory, so memory then hardly grows with depth, for about a third more compute.
    """

    recompute: bool

    def __init__(self, *blocks: InvertibleBlock, group: int = 1) -> None:
        super().__init__()
        for i, b in enumerate(blocks):
            if not isinstance(b, InvertibleBlock):
                raise TypeError(f"block {i} must be an InvertibleBlock, got {type(b).__name__}")
        if group < 1:
            raise ValueError(f"group must be >= 1, got {group}")
        self.blocks = nn.ModuleList(blocks)
        self.group = group
        self.recompute = False

    def _units(self, reverse: bool = False) -> list[list[InvertibleBlock]]:
        """The blocks in runs of ``group`` while recomputing (each run one checkpoint), else
        one by one; in the order they apply."""
        blocks = list(self.blocks)
        size = self.group if self.recompute and torch.is_grad_enabled() else 1
        units = [blocks[i : i + size] for i in range(0, len(blocks), size)]
        return [u[::-1] for u in units[::-1]] if reverse else units

    def _run(self, fn, x: Tensor, cond: Tensor | None):  # noqa: ANN001, ANN202 - a function
        if self.recompute and torch.is_grad_enabled():
            return checkpoint(fn, x, cond=cond, use_reentrant=False)
        return fn(x, cond=cond)

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        log_det = x.new_zeros(x.shape[0])
        for unit in self._units():
            step = self._run(functools.partial(_forward_and_log_det, unit), x, cond)
            x, log_det = step.out, log_det + step.log_det
        return FlowOutput(x, log_det)

    def forward(self, x: Tensor, *, cond: Tensor | None = None) -> Tensor:
        for unit in self._units():
            x = self._run(functools.partial(_apply, unit, "forward"), x, cond)
        return x

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        for unit in self._units(reverse=True):
            z = self._run(functools.partial(_apply, unit, "inverse"), z, cond)
        return z


def _forward_and_log_det(
    blocks: list[InvertibleBlock], x: Tensor, *, cond: Tensor | None
) -> FlowOutput:
    if len(blocks) == 1:
        return blocks[0].forward_and_log_det(x, cond=cond)
    log_det = x.new_zeros(x.shape[0])
    for b in blocks:
        step = b.forward_and_log_det(x, cond=cond)
        x, log_det = step.out, log_det + step.log_det
    return FlowOutput(x, log_det)


def _apply(blocks: list[InvertibleBlock], method: str, x: Tensor, *, cond: Tensor | None) -> Tensor:
    for b in blocks:
        x = b(x, cond=cond) if method == "forward" else b.inverse(x, cond=cond)
    return x


def set_recompute(module: nn.Module, on: bool) -> int:
    """Turn activation recomputation on or off in every ``InvertibleSequential`` of ``module``
    (a flow, a generator, a DDP-wrapped model); returns how many were set. Changes no weight and
    no result, only the memory/compute trade of the backward pass. Only innermost sequences
    recompute: a sequence that holds sequences (a multi-scale level) would recompute twice."""
    seqs = [
        m
        for m in module.modules()
        if isinstance(m, InvertibleSequential)
        and not any(isinstance(s, InvertibleSequential) for b in m.blocks for s in b.modules())
    ]
    for m in seqs:
        m.recompute = bool(on)
    return len(seqs)
