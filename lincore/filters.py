"""Deterministic image filters that make style targets offline (no pretrained style networks).

Each maps ``(B, C, H, W)`` images in ``[0, 1]`` to the same shape and range. Some are linear
(blur), some are not (posterise, sketch, sepia's clipping): the style model has to learn both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

SEPIA = ((0.393, 0.769, 0.189), (0.349, 0.686, 0.168), (0.272, 0.534, 0.131))


def _check(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"filters take (B, C, H, W) images, got shape {tuple(x.shape)}")


def _per_channel(x: Tensor, kernel: Tensor) -> Tensor:
    c, k = x.shape[1], kernel.shape[-1]
    weight = kernel.to(x).expand(c, 1, k, k)
    return F.conv2d(F.pad(x, (k // 2,) * 4, mode="replicate"), weight, groups=c)


def sepia(x: Tensor) -> Tensor:
    """The classic sepia colour matrix (RGB only), clipped to ``[0, 1]``."""
    _check(x)
    if x.shape[1] != 3:
        raise ValueError(f"sepia needs RGB images (3 channels), got {x.shape[1]}")
    return torch.einsum("oc,bchw->bohw", torch.tensor(SEPIA).to(x), x).clamp(0, 1)


def posterise(x: Tensor, levels: int = 4) -> Tensor:
    """``levels`` grey levels per channel."""
    _check(x)
    return torch.round(x * (levels - 1)) / (levels - 1)


def blur(x: Tensor) -> Tensor:
    """A 5x5 Gaussian blur (sigma 1), edges replicated."""
    _check(x)
    t = torch.arange(5, dtype=torch.float64) - 2
    g = torch.exp(-(t**2) / 2)
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    return _per_channel(x, kernel)


def emboss(x: Tensor) -> Tensor:
    """The emboss kernel around mid-grey, clipped."""
    _check(x)
    kernel = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    return (_per_channel(x, kernel) + 0.5).clamp(0, 1)


def sketch(x: Tensor) -> Tensor:
    """Pencil sketch: dark where the Sobel gradient of the luminance is large."""
    _check(x)
    lum = x.mean(1, keepdim=True)
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    gx, gy = _per_channel(lum, sx), _per_channel(lum, sx.T)
    edges = (1 - 2 * torch.sqrt(gx**2 + gy**2 + 1e-12)).clamp(0, 1)
    return edges.expand_as(x).contiguous()


FILTERS: dict[str, Callable[[Tensor], Tensor]] = {
    "sepia": sepia,
    "posterise": posterise,
    "sketch": sketch,
    "emboss": emboss,
    "blur": blur,
}


def apply(name: str, x: Tensor) -> Tensor:
    """The filter called ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    if name not in FILTERS:
        raise ValueError(f"unknown style filter {name!r}; known: {', '.join(FILTERS)}")
    return FILTERS[name](x)
