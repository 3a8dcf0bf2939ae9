"""Modular style transfer: one shared invertible network, one linear operator per style.

``f_s(x) = g(.; 0)^-1(A_s g(x; 1))`` with ``A_s`` a depthwise convolution of the latent.
Because every style shares ``g``, styles are points of one space of operators:

- swapping ``A_s`` swaps the style;
- ``α A_1 + (1 - α) A_2`` is a style too, and its output is exactly
  ``α ⊙ f_1(x) ⊕ (1 - α) ⊙ f_2(x)`` in the vector space ``g(.; 0)`` induces on outputs;
- a new style is a new ``A`` fitted with ``g`` frozen (``add_style`` then ``freeze_network``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.inn import Conditioned, Flow, ImageFlow
from lincore.linearizer import Linearizer
from lincore.operators import DepthwiseConv


class StyleTransfer(nn.Module):
    """One conditional ``g`` (content side ``c = 1``, style side ``c = 0``), ``styles`` operators.

    ``forward(batch)`` takes ``(B, 1 + K, C, H, W)``: the content in column 0 and the targets of
    the styles ``fit_styles`` (all by default) after it, and returns the per-style pixel MSE and
    their sum as ``loss``, so ``lincore.fit.fit`` trains it.

    >>> import torch
    >>> m = StyleTransfer.build((3, 8, 8), styles=2, depth=1, hidden=8)
    >>> m.initialize_from(torch.rand(4, 3, 8, 8))
    >>> m.transfer(torch.rand(2, 3, 8, 8), style=1).shape
    torch.Size([2, 3, 8, 8])
    """

    def __init__(self, g: Flow, styles: int, *, kernel_size: int = 3) -> None:
        super().__init__()
        if not isinstance(g, Flow) or not g.conditional:
            raise TypeError("g must be a lincore Flow built with conditional=True")
        if len(g.event_shape) != 3:
            raise ValueError(f"g must act on (C, H, W) images, got event shape {g.event_shape}")
        check_int("styles", styles, low=1)
        self.g = g
        self.g_content, self.g_style = Conditioned(g, 1.0), Conditioned(g, 0.0)
        self.kernel_size = kernel_size
        self.operators = nn.ModuleList(
            DepthwiseConv(*g.event_shape, kernel_size=kernel_size) for _ in range(styles)
        )
        self.fit_styles: list[int] = list(range(styles))

    @classmethod
    def build(
        cls,
        image_shape: tuple[int, int, int],
        styles: int,
        *,
        depth: int = 4,
        hidden: int = 32,
        kernel_size: int = 3,
        seed: int = 0,
    ) -> StyleTransfer:
        """The standard model: a Glow-style image flow (squeezes 2x2 when ``C`` is odd)."""
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
        c, h, w = image_shape
        if c % 2 == 1 and (h < 2 or w < 2 or h % 2 or w % 2):
            raise ValueError(
                f"image_shape {image_shape} is too small or odd for the 2x2 squeeze an image "
                "flow needs with an odd channel count; use even height and width >= 2"
            )
        torch.manual_seed(seed)
        g = ImageFlow(c, h, w, depth=depth, hidden=hidden, conditional=True, seed=seed)
        return cls(g, styles, kernel_size=kernel_size)

    @property
    def n_styles(self) -> int:
        return len(self.operators)

    def _index(self, style: int) -> int:
        if isinstance(style, bool) or not isinstance(style, int):
            raise TypeError(f"style must be an integer index, got {style!r}")
        if not 0 <= style < self.n_styles:
            raise IndexError(f"style must be in 0..{self.n_styles - 1}, got {style}")
        return style

    def initialize_from(self, x: Tensor) -> None:
        """ActNorm from a content batch, once before training."""
        self.g.initialize_from(x, cond=1.0)

    def linearizer(self, operator: int | DepthwiseConv) -> Linearizer:
        """``f`` for a style index or any operator (a mixed one, a new one)."""
        A = self.operators[self._index(operator)] if isinstance(operator, int) else operator
        return Linearizer(self.g_content, A, self.g_style)

    def transfer(self, x: Tensor, style: int) -> Tensor:
        """``f_style(x)``."""
        self._check_images("content", x)
        return self.linearizer(style)(x)

    def mix(self, alpha: float, first: int, second: int) -> DepthwiseConv:
        """``α A_first + (1 - α) A_second``."""
        ops = [self.operators[self._index(first)], self.operators[self._index(second)]]
        return DepthwiseConv.mix([alpha, 1 - alpha], ops)

    def interpolate(self, x: Tensor, first: int, second: int, alphas: list[float]) -> Tensor:
        """``(len(alphas), B, C, H, W)``: the content in styles mixed from ``second`` (α = 0)
        to ``first`` (α = 1), linearly in the operator."""
        self._check_images("content", x)
        return torch.stack([self.linearizer(self.mix(a, first, second))(x) for a in alphas])

    def add_style(self) -> int:
        """A new identity-initialised operator; returns its index."""
        p = next(self.parameters())
        op = DepthwiseConv(*self.g.event_shape, kernel_size=self.kernel_size).to(p)
        self.operators.append(op)
        return self.n_styles - 1

    def freeze_network(self, frozen: bool = True) -> None:
        """Fix ``g`` (and every existing operator) so only what is fitted next changes."""
        self.g.requires_grad_(not frozen)

    def _check_images(self, name: str, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.g.event_shape:
            raise ValueError(
                f"{name} images must have shape (B, {', '.join(map(str, self.g.event_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def style_loss(self, content: Tensor, target: Tensor, style: int) -> Tensor:
        """Pixel MSE between ``f_style(content)`` and the filter's ``target``."""
        if content.shape != target.shape:
            raise ValueError(
                f"content {tuple(content.shape)} and style target {tuple(target.shape)} must "
                "have the same shape"
            )
        return (self.transfer(content, style) - target).pow(2).mean()

    def forward(self, batch: Tensor) -> dict[str, Tensor]:
        k = len(self.fit_styles)
        if batch.dim() != 5 or batch.shape[1] != 1 + k:
            raise ValueError(
                f"batch must be (B, 1 + {k}, C, H, W): content then one target per style in "
                f"fit_styles={self.fit_styles}, got {tuple(batch.shape)}"
            )
        terms = {
            f"style_{s}": self.style_loss(batch[:, 0], batch[:, 1 + i], s)
            for i, s in enumerate(self.fit_styles)
        }
        terms["loss"] = sum(terms.values()) / k
        return terms
