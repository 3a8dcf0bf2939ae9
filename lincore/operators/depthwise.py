"""A per-channel (depthwise) convolution on ``(C, H, W)`` latents: the style operator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lincore._checks import check_int
from lincore.operators.base import LinearOperator


class DepthwiseConv(LinearOperator):
    """``A z = K * z`` channel by channel, ``k x k`` kernels, zero padding ("same" size).

    Linear in ``z`` and in the kernels ``K``: ``mix`` of two operators is the operator of the
    mixed kernels, exactly, which is what makes style interpolation linear in ``A``. Starts at
    the identity (a centred delta kernel), so an untrained style leaves the latent unchanged.

    >>> import torch
    >>> A = DepthwiseConv(2, 4, 4, kernel_size=3).double()
    >>> bool(torch.allclose(A.matrix(), torch.eye(32, dtype=torch.float64)))
    True
    """

    def __init__(self, channels: int, height: int, width: int, *, kernel_size: int = 3) -> None:
        self.latent_shape = tuple(
            check_int(n, v, low=1)
            for n, v in (("channels", channels), ("height", height), ("width", width))
        )
        dim = channels * height * width
        super().__init__(dim, dim)
        k = check_int("kernel_size", kernel_size, low=1)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred 'same' kernel), got {k}")
        delta = torch.zeros(channels, 1, k, k)
        delta[:, 0, k // 2, k // 2] = 1.0
        self.kernel = nn.Parameter(delta)

    def _forward(self, z: Tensor) -> Tensor:
        c, h, w = self.latent_shape
        k = self.kernel.shape[-1]
        out = F.conv2d(z.view(-1, c, h, w), self.kernel.to(z), padding=k // 2, groups=c)
        return out.flatten(1)

    def matrix(self) -> Tensor:
        eye = torch.eye(self.dim_in, dtype=self.kernel.dtype, device=self.kernel.device)
        return self._forward(eye).T  # rows of _forward(I) are A^T's

    @staticmethod
    def mix(weights: list[float], operators: list[DepthwiseConv]) -> DepthwiseConv:
        """``sum_i w_i A_i`` as one operator (kernels mixed; a snapshot, no shared weights)."""
        if not operators or len(weights) != len(operators):
            raise ValueError(
                f"need one weight per operator, got {len(weights)} weights and "
                f"{len(operators)} operators"
            )
        shapes = {(op.latent_shape, op.kernel.shape) for op in operators}
        if len(shapes) != 1:
            raise ValueError(f"operators differ in latent or kernel shape: {sorted(shapes)}")
        first = operators[0]
        out = DepthwiseConv(*first.latent_shape, kernel_size=first.kernel.shape[-1])
        out = out.to(first.kernel)  # dtype first: a float32 copy would round the mix
        with torch.no_grad():
            out.kernel.copy_(sum(w * op.kernel for w, op in zip(weights, operators, strict=True)))
        return out
