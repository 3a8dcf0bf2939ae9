"""The two invertible networks that Linearizers are built from: vectors and images.

Both are ``Flow``s: a validated public edge (shape, dtype, finiteness, domain condition) around an
``InvertibleSequential`` body of blocks. A flow built with ``conditional=True`` takes a domain
condition ``cond`` (0.0 = noise, 1.0 = data, or a ``(B,)`` tensor) in every call, so that one
network with shared weights can be both ``g_x`` and ``g_y``; ``Conditioned`` binds one value.
"""

from __future__ import annotations

import math

from torch import Tensor

from lincore._checks import as_condition, check_int, check_tensor
from lincore.inn.actnorm import ActNorm
from lincore.inn.base import FlowOutput, Inverse, InvertibleBlock, InvertibleSequential
from lincore.inn.coupling import ConvConditioner, MLPConditioner, coupling_block
from lincore.inn.data_init import initialize_through
from lincore.inn.multiscale import scale_levels
from lincore.inn.permutation import InvertibleConv1x1
from lincore.inn.squeeze import Squeeze


class Flow(InvertibleBlock):
    """An invertible network ``g: R^event_shape -> R^event_shape`` with a checked public edge."""

    event_shape: tuple[int, ...]
    conditional: bool

    def __init__(
        self,
        body: InvertibleSequential,
        event_shape: tuple[int, ...],
        *,
        conditional: bool,
        check_finite: bool,
    ) -> None:
        super().__init__()
        self.body = body
        self.event_shape = event_shape
        self.conditional = conditional
        self.check_finite = check_finite

    @property
    def dim(self) -> int:
        """Dimension of the latent vector space, ``prod(event_shape)``."""
        return math.prod(self.event_shape)

    def _edge(self, name: str, x: Tensor, cond: float | Tensor | None) -> Tensor | None:
        check_tensor(name, x, self.event_shape, check_finite=self.check_finite)
        if self.conditional and cond is None:
            raise ValueError(
                "this flow is conditional: pass cond=0.0 (noise domain) or cond=1.0 (data domain)"
            )
        if not self.conditional and cond is not None:
            raise ValueError(
                "this flow is unconditional: build it with conditional=True to use cond"
            )
        return None if cond is None else as_condition(cond, x.shape[0], x)

    def forward_and_log_det(self, x: Tensor, *, cond: float | Tensor | None = None) -> FlowOutput:
        """``g(x)`` and ``log|det dg/dx|`` per sample, shape ``(B,)``."""
        return self.body.forward_and_log_det(x, cond=self._edge("x", x, cond))

    def forward(self, x: Tensor, *, cond: float | Tensor | None = None) -> Tensor:
        """``z = g(x)``, data -> latent, same shape as ``x``."""
        return self.body(x, cond=self._edge("x", x, cond))

    def inverse(self, z: Tensor, *, cond: float | Tensor | None = None) -> Tensor:
        """``x = g^-1(z)``, latent -> data, exact up to float round-off."""
        return self.body.inverse(z, cond=self._edge("z", z, cond))

    def initialize_from(self, x: Tensor, *, cond: float | Tensor | None = None) -> None:
        """Data-dependent ActNorm initialisation, block by block, from one batch (no-op without)."""
        initialize_through(self.body, x, self._edge("x", x, cond))


class CouplingFlow(Flow):
    """RealNVP/Glow-style flow on ``R^dim``: ``depth`` x (coupling -> learned LU mixing).

    Any ``dim >= 2`` works, odd included (the coupling splits ``dim // 2`` / ``dim - dim // 2``).

    >>> import torch
    >>> g = CouplingFlow(dim=3, depth=4, hidden=16)
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(g.inverse(g(x)), x, atol=1e-5)
    True
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        hidden: int,
        *,
        conditional: bool = False,
        clamp: float = 2.0,
        actnorm: bool = False,
        coupling: str = "affine",
        seed: int = 0,
        check_finite: bool = True,
    ) -> None:
        check_int("dim", dim, low=2)
        check_int("depth", depth, low=1)
        check_int("hidden", hidden, low=1)
        blocks: list[InvertibleBlock] = []
        for i in range(depth):
            if actnorm:
                blocks.append(ActNorm(dim))
            blocks.append(
                coupling_block(
                    coupling, dim, MLPConditioner, hidden, conditional=conditional, clamp=clamp
                )
            )
            blocks.append(InvertibleConv1x1(dim, seed=seed + i))
        super().__init__(
            InvertibleSequential(*blocks),
            (dim,),
            conditional=conditional,
            check_finite=check_finite,
        )


class ImageFlow(Flow):
    """Glow-style flow on ``(C, H, W)`` images, same shape in and out.

    ``[Squeeze] -> depth x (ActNorm -> affine coupling -> invertible 1x1 conv) -> [un-Squeeze]``;
    the squeeze is used when ``C`` is odd (1-channel digits, RGB), and needs even ``H`` and ``W``.
    ActNorm needs ``initialize_from(batch)`` once before use.

    >>> import torch
    >>> g = ImageFlow(1, 8, 8, depth=2, hidden=8)
    >>> x = torch.rand(4, 1, 8, 8)
    >>> g.initialize_from(x)
    >>> g(x).shape
    torch.Size([4, 1, 8, 8])
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        *,
        depth: int,
        hidden: int,
        conditional: bool = False,
        clamp: float = 2.0,
        coupling: str = "affine",
        seed: int = 0,
        check_finite: bool = True,
    ) -> None:
        check_int("channels", channels, low=1)
        check_int("height", height, low=1)
        check_int("width", width, low=1)
        check_int("depth", depth, low=1)
        check_int("hidden", hidden, low=1)
        squeeze = channels % 2 == 1
        if squeeze and (height % 2 or width % 2):
            raise ValueError(
                f"an image flow with an odd channel count ({channels}) squeezes 2x2 pixels into "
                f"channels, so height and width must be even, got {height}x{width}; "
                "pad or resize the images"
            )
        c = 4 * channels if squeeze else channels
        blocks: list[InvertibleBlock] = [Squeeze()] if squeeze else []
        for i in range(depth):
            blocks += [
                ActNorm(c),
                coupling_block(
                    coupling, c, ConvConditioner, hidden, conditional=conditional, clamp=clamp
                ),
                InvertibleConv1x1(c, seed=seed + i),
            ]
        if squeeze:
            blocks.append(Inverse(Squeeze()))
        super().__init__(
            InvertibleSequential(*blocks),
            (channels, height, width),
            conditional=conditional,
            check_finite=check_finite,
        )


class MultiScaleImageFlow(Flow):
    """Glow-style multi-scale flow on ``(C, H, W)`` images, same shape in and out.

    ``levels`` x (squeeze -> steps of (ActNorm -> coupling -> 1x1 conv) -> factor half out),
    ``depth`` steps shared among the levels, the factored halves kept in the latent
    (``lincore.inn.multiscale``). Couplings use
    two-resolution conditioners, so the deepest level's see most of a 28x28 image. Needs
    ``initialize_from(batch)`` once before use.

    >>> import torch
    >>> g = MultiScaleImageFlow(1, 8, 8, levels=2, depth=2, hidden=8)
    >>> x = torch.rand(4, 1, 8, 8)
    >>> g.initialize_from(x)
    >>> bool((g.inverse(g(x)) - x).abs().max() < 1e-5)
    True
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        *,
        levels: int,
        depth: int,
        hidden: int,
        conditional: bool = False,
        clamp: float = 2.0,
        coupling: str = "affine",
        seed: int = 0,
        check_finite: bool = True,
    ) -> None:
        for name, v in (("channels", channels), ("height", height), ("width", width)):
            check_int(name, v, low=1)
        check_int("levels", levels, low=1)
        check_int("depth", depth, low=1)
        check_int("hidden", hidden, low=1)
        nest = scale_levels(
            channels,
            height,
            width,
            levels=levels,
            depth=depth,
            hidden=hidden,
            conditional=conditional,
            clamp=clamp,
            coupling=coupling,
            seed=seed,
        )
        super().__init__(
            InvertibleSequential(nest),
            (channels, height, width),
            conditional=conditional,
            check_finite=check_finite,
        )


class Conditioned(Flow):
    """A conditional flow with its domain condition bound: ``g(.; cond)`` as a network of its own.

    Shares every weight with ``flow``; two ``Conditioned`` of the same flow and value induce the
    same vector space, which is what lets Linearizers built on them compose.
    """

    def __init__(self, flow: Flow, cond: float) -> None:
        if not isinstance(flow, Flow) or not flow.conditional:
            raise TypeError("Conditioned needs a Flow built with conditional=True")
        InvertibleBlock.__init__(self)  # no body of its own: every call goes to ``flow``
        self.flow = flow
        self.cond = float(cond)
        self.event_shape = flow.event_shape
        self.conditional = False
        self.check_finite = flow.check_finite

    def _unbound(self, cond: float | Tensor | None) -> float:
        if cond is not None:
            raise ValueError(f"this network's condition is bound to {self.cond}; do not pass cond")
        return self.cond

    def forward_and_log_det(self, x: Tensor, *, cond: float | Tensor | None = None) -> FlowOutput:
        return self.flow.forward_and_log_det(x, cond=self._unbound(cond))

    def forward(self, x: Tensor, *, cond: float | Tensor | None = None) -> Tensor:
        return self.flow(x, cond=self._unbound(cond))

    def inverse(self, z: Tensor, *, cond: float | Tensor | None = None) -> Tensor:
        return self.flow.inverse(z, cond=self._unbound(cond))

    def initialize_from(self, x: Tensor, *, cond: float | Tensor | None = None) -> None:
        self.flow.initialize_from(x, cond=self._unbound(cond))


class Reshaped(Flow):
    """A vector flow presented on samples of another shape: flatten, apply, unflatten.

    Lets an MLP-coupling flow serve small images (8x8 digits) with the images' own shape at the
    edge; the log-determinant is unchanged by the reshapes.
    """

    def __init__(self, flow: Flow, event_shape: tuple[int, ...]) -> None:
        if len(flow.event_shape) != 1 or math.prod(event_shape) != flow.dim:
            raise ValueError(
                f"Reshaped needs a vector flow with dim = prod{tuple(event_shape)}, "
                f"got event shape {flow.event_shape}"
            )
        InvertibleBlock.__init__(self)
        self.flow = flow
        self.event_shape = tuple(event_shape)
        self.conditional = flow.conditional
        self.check_finite = flow.check_finite

    def _flat(self, x: Tensor) -> Tensor:
        check_tensor("x", x, self.event_shape, check_finite=False)
        return x.reshape(x.shape[0], -1)

    def forward_and_log_det(self, x: Tensor, *, cond: float | Tensor | None = None) -> FlowOutput:
        out = self.flow.forward_and_log_det(self._flat(x), cond=cond)
        return FlowOutput(out.out.reshape(x.shape), out.log_det)

    def forward(self, x: Tensor, *, cond: float | Tensor | None = None) -> Tensor:
        return self.flow(self._flat(x), cond=cond).reshape(x.shape)

    def inverse(self, z: Tensor, *, cond: float | Tensor | None = None) -> Tensor:
        return self.flow.inverse(self._flat(z), cond=cond).reshape(z.shape)

    def initialize_from(self, x: Tensor, *, cond: float | Tensor | None = None) -> None:
        self.flow.initialize_from(self._flat(x), cond=cond)
