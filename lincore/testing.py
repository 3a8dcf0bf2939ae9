"""Helpers for tests and benchmarks: networks pushed far from the identity, reproducibly.

A fresh flow is the identity (zero-initialised couplings), which would make every property test
vacuous; these give it the size of deviation a trained network has.
"""

from __future__ import annotations

import torch

from lincore.inn import ActNorm, AffineCoupling, Flow, InvertibleConv1x1, SplineCoupling
from lincore.operators.time_isotropic import TimeIsotropicLowRank, TimeOperator


def far_from_identity(flow: Flow, *, strength: float = 1.0, seed: int = 0) -> Flow:
    """Give every coupling a random non-zero output layer (their default is the identity).

    Each of ``depth`` blocks gets ``strength / sqrt(depth)``, so the whole network moves by
    O(strength) whatever its depth, like a trained one, instead of exploding like e^depth.
    ActNorm and the LU mixing layers get random parameters, sized the same way.
    """
    gen = torch.Generator().manual_seed(seed)
    couplings = [m for m in flow.modules() if isinstance(m, (AffineCoupling, SplineCoupling))]
    std = strength / len(couplings) ** 0.5
    with torch.no_grad():
        for m in couplings:
            net = m.conditioner
            last = net.out if hasattr(net, "out") else net.net[-1]
            fan_in = last.weight[0].numel()
            last.weight.copy_(torch.randn(last.weight.shape, generator=gen) * std / fan_in**0.5)
            last.bias.copy_(torch.randn(last.bias.shape, generator=gen) * std)
        mixers = [m for m in flow.modules() if isinstance(m, InvertibleConv1x1)]
        for m in mixers:  # triangular factors O(1/sqrt(C)) off the identity: well conditioned
            c = m.lower.shape[0]
            mix_std = 0.5 * strength / (c * len(mixers)) ** 0.5
            m.lower.copy_(mix_std * torch.randn(m.lower.shape, generator=gen))
            m.upper.copy_(mix_std * torch.randn(m.upper.shape, generator=gen))
            m.log_s.copy_(mix_std * c**0.5 * torch.randn(m.log_s.shape, generator=gen))
        actnorms = [m for m in flow.modules() if isinstance(m, ActNorm)]
        for m in actnorms:
            an_std = 0.3 * strength / len(actnorms) ** 0.5
            m.log_scale.copy_(an_std * torch.randn(m.log_scale.shape, generator=gen))
            m.bias.copy_(an_std * torch.randn(m.bias.shape, generator=gen))
            m.initialized.fill_(True)
    return flow


def far_from_zero(op: TimeOperator, *, seed: int = 0) -> TimeOperator:
    """A time operator whose every part matters: random bases of unit-size columns, a time
    network whose core is O(1), and isotropic variances away from 1 (``s != v``), so that a test
    of the collapse or the likelihood exercises ``a(t)``, the core and the bases together. The
    original ``TimeLowRank`` is returned as it is (its default initialisation is already O(1))."""
    if not isinstance(op, TimeIsotropicLowRank):
        return op
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for basis in (op.U, op.V):
            if basis is not None:
                basis.copy_(torch.randn(basis.shape, generator=gen) / basis.shape[0] ** 0.5)
        last = op.mlp[-1]
        last.weight.copy_(
            torch.randn(last.weight.shape, generator=gen) / last.weight.shape[1] ** 0.5
        )
        last.bias.copy_(torch.randn(last.bias.shape, generator=gen))
        op.log_signal.fill_(0.4)
        op.log_noise.fill_(-0.3)
    return op


def relative_deviation(flow: Flow, x: torch.Tensor, *, cond: float | None = None) -> float:
    """How far ``g`` is from linear: ``‖g(2x) - 2 g(x)‖ / ‖2 g(x)‖`` (0 for a linear map)."""
    with torch.no_grad():
        z = flow(x, cond=cond)
        return float((flow(2 * x, cond=cond) - 2 * z).norm() / (2 * z).norm())
