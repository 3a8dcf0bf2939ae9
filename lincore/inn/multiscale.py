"""A multi-scale image flow (RealNVP/Glow): each level squeezes, couples, and factors half out.

The factored-out half of every level is not dropped: it stays in the latent untouched, and the
level un-squeezes what it squeezed, so ``g`` is a bijection ``R^(C,H,W) -> R^(C,H,W)`` as the
Linearizer needs (its algebra and the collapse are unchanged). What changes is where compute
goes: half of the variables stop at each level, and the deeper levels couple a 4x smaller grid
whose 3x3 convolutions see 2x, 4x, ... further across the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lincore.inn.actnorm import ActNorm
from lincore.inn.base import FlowOutput, InvertibleBlock, InvertibleSequential
from lincore.inn.coupling import coupling_block
from lincore.inn.permutation import InvertibleConv1x1


class TwoScaleConditioner(nn.Module):
    """``(x1, cond) -> (s, t)`` for images, seeing twice as far as ``ConvConditioner``.

    conv3x3 -> (itself + a half-resolution path: pool, conv3x3 to ``hidden/4``, upsample,
    conv1x1 back) -> conv1x1 -> conv3x3. The coarse path widens one coupling's receptive field
    from 5x5 to about 11x11 pixels for under half the cost of the conv1x1 (it is narrow and runs
    on a quarter of the positions). Zero-initialised output: a fresh block is the identity.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden: int, cond_channels: int
    ) -> None:
        super().__init__()
        narrow = max(4, hidden // 4)
        self.inp = nn.Conv2d(in_channels + cond_channels, hidden, 3, padding=1)
        self.coarse = nn.Conv2d(hidden, narrow, 3, padding=1)
        self.widen = nn.Conv2d(narrow, hidden, 1)
        self.mix = nn.Conv2d(hidden, hidden, 1)
        self.out = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor, cond: Tensor | None) -> Tensor:
        if cond is not None:  # cond: (B, 1) -> a constant (B, 1, H, W) channel
            h = torch.cat([h, cond[:, :, None, None].expand(-1, -1, *h.shape[2:])], dim=1)
        h = F.silu(self.inp(h))
        coarse = F.silu(self.coarse(F.avg_pool2d(h, 2, ceil_mode=True)))
        h = h + self.widen(F.interpolate(coarse, size=h.shape[2:], mode="nearest"))
        return self.out(F.silu(self.mix(h)))


def flow_steps(
    channels: int,
    depth: int,
    hidden: int,
    *,
    conditional: bool,
    clamp: float,
    seed: int,
    coupling: str = "affine",
) -> InvertibleSequential:
    """``depth`` x (ActNorm -> coupling -> invertible 1x1 conv) on ``channels``; recomputed a
    step at a time (one checkpoint keeps one input per step, not three)."""
    blocks: list[InvertibleBlock] = []
    for i in range(depth):
        block = coupling_block(
            coupling, channels, TwoScaleConditioner, hidden, conditional=conditional, clamp=clamp
        )
        blocks += [ActNorm(channels), block, InvertibleConv1x1(channels, seed=seed + i)]
    return InvertibleSequential(*blocks, group=3)


class ScaleLevel(InvertibleBlock):
    """squeeze -> steps -> [keep half, send the other half to the next level] -> un-squeeze.

    ``(C, H, W) -> (C, H, W)``: the output is the image-shaped latent of this level and all
    below it. ``inner`` is the next level (``None`` at the last one, which keeps everything).
    """

    def __init__(self, steps: InvertibleSequential, inner: ScaleLevel | None) -> None:
        super().__init__()
        self.steps = steps
        self.inner = inner

    def _split(self, h: Tensor) -> int:
        return h.shape[1] // 2

    def forward_and_log_det(self, x: Tensor, *, cond: Tensor | None = None) -> FlowOutput:
        out = self.steps.forward_and_log_det(F.pixel_unshuffle(x, 2), cond=cond)
        h, log_det = out.out, out.log_det
        if self.inner is not None:
            k = self._split(h)
            deeper = self.inner.forward_and_log_det(h[:, k:], cond=cond)
            h, log_det = torch.cat([h[:, :k], deeper.out], 1), log_det + deeper.log_det
        return FlowOutput(F.pixel_shuffle(h, 2), log_det)

    def inverse(self, z: Tensor, *, cond: Tensor | None = None) -> Tensor:
        h = F.pixel_unshuffle(z, 2)
        if self.inner is not None:
            k = self._split(h)
            h = torch.cat([h[:, :k], self.inner.inverse(h[:, k:], cond=cond)], 1)
        return F.pixel_shuffle(self.steps.inverse(h, cond=cond), 2)

    @torch.no_grad()
    def initialize_from(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """Data-dependent ActNorm set-up of this level and the ones below, from ``x``."""
        from lincore.inn.data_init import initialize_through  # the helper knows this class

        h = initialize_through(self.steps, F.pixel_unshuffle(x, 2), cond)
        if self.inner is not None:
            k = self._split(h)
            h = torch.cat([h[:, :k], self.inner.initialize_from(h[:, k:], cond)], 1)
        return F.pixel_shuffle(h, 2)


def max_levels(channels: int, height: int, width: int) -> int:
    """How many levels ``(C, H, W)`` allows: each squeezes 2x2 (even sides) and the next one
    gets half the channels (``4C / 2`` stays >= 2)."""
    levels, c, h, w = 0, channels, height, width
    while h % 2 == 0 and w % 2 == 0 and 4 * c >= 2:
        levels, c, h, w = levels + 1, (4 * c) - (4 * c) // 2, h // 2, w // 2
    return levels


def scale_levels(
    channels: int,
    height: int,
    width: int,
    *,
    levels: int,
    depth: int,
    hidden: int,
    conditional: bool,
    clamp: float,
    seed: int,
    coupling: str = "affine",
) -> ScaleLevel:
    """The nest of ``levels`` levels sharing ``depth`` steps, outermost first (the outer levels
    get the remainder: depth 6 at 2 levels is 3 + 3, at 4 levels 2 + 2 + 1 + 1). ``depth`` then
    counts couplings as it does for the single-scale flow, and most of them run on the smaller
    grids."""
    allowed = max_levels(channels, height, width)
    if not 1 <= levels <= allowed:
        raise ValueError(
            f"a {channels}x{height}x{width} image allows 1..{allowed} levels (each squeezes 2x2 "
            f"pixels, so height and width must stay even), got {levels}; lower model.levels "
            "or resize the images"
        )
    sizes, c = [], channels
    for _ in range(levels):
        sizes.append(4 * c)
        c = 4 * c - (4 * c) // 2
    if depth < levels:
        raise ValueError(
            f"{levels} levels need at least one coupling each, got depth {depth}; "
            "raise model.depth or lower model.levels"
        )
    inner: ScaleLevel | None = None
    for i in reversed(range(levels)):
        k = depth // levels + (1 if i < depth % levels else 0)
        steps = flow_steps(
            sizes[i],
            k,
            hidden,
            conditional=conditional,
            clamp=clamp,
            seed=seed + 1000 * i,
            coupling=coupling,
        )
        inner = ScaleLevel(steps, inner)
    assert inner is not None
    return inner
