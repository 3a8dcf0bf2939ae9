"""Rational-quadratic spline couplings (issue 24) against their definitions: exact inverse both
ways at depth, log-det = log|det J| by autograd, monotone, the identity at initialisation and
outside the tail bound, and a spline model's checkpoint loads and samples the same."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from lincore.generators import OneStepConfig, OneStepFlowMatching
from lincore.inn import (
    CouplingFlow,
    ImageFlow,
    MLPConditioner,
    MultiScaleImageFlow,
    SplineCoupling,
    rational_quadratic,
)
from lincore.testing import far_from_identity, relative_deviation
from pipelines.model import checkpoints


def spline_flow(shape: tuple[int, ...], depth: int):
    torch.manual_seed(0)
    if len(shape) == 1:
        g = CouplingFlow(shape[0], depth, 32, coupling="spline")
    elif shape == (1, 28, 28):
        g = MultiScaleImageFlow(*shape, levels=2, depth=max(depth, 2), hidden=8, coupling="spline")
    else:
        g = ImageFlow(*shape, depth=depth, hidden=8, coupling="spline")
    if any(True for _ in g.modules() if type(_).__name__ == "ActNorm"):
        g.initialize_from(torch.randn(16, *shape))
    return far_from_identity(g).double()


CASES = [
    pytest.param(s, d, id=f"{'x'.join(map(str, s))}-depth{d}")
    for s in [(64,), (1, 8, 8), (1, 28, 28)]
    for d in (1, 32)
]


@pytest.mark.parametrize(("shape", "depth"), CASES)
def test_spline_flow_round_trips_both_ways_float64(shape, depth):
    g = spline_flow(shape, depth)
    x = torch.randn(3, *shape, dtype=torch.float64)
    z = g(x).detach()
    assert float((z - x).norm() / x.norm()) > 0.3, "the network must be far from the identity"
    assert relative_deviation(g, x) > 0.05, "the network must be non-linear"
    torch.testing.assert_close(g.inverse(z), x, atol=1e-10, rtol=0)
    w = torch.randn_like(x)
    torch.testing.assert_close(g(g.inverse(w)), w, atol=1e-10, rtol=0)


def test_spline_flow_is_stable_in_float32_at_depth_32():
    g = spline_flow((64,), 32).float()
    x = torch.randn(256, 64)
    with torch.no_grad():
        err = float((g.inverse(g(x)) - x).abs().max())
    assert err < 1e-3, f"float32 round trip at depth 32: {err:.2e}"


@pytest.mark.parametrize("shape", [(6,), (1, 4, 4)], ids=str)
def test_spline_log_det_matches_autograd(shape):
    g = spline_flow(shape, 3)
    x = torch.randn(3, *shape, dtype=torch.float64)
    out = g.forward_and_log_det(x)
    d = x[0].numel()
    for i in range(3):
        jac = jacobian(lambda v: g(v.unsqueeze(0))[0].flatten(), x[i]).reshape(d, d)
        torch.testing.assert_close(
            out.log_det[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-9, rtol=0
        )


def test_spline_is_monotone_with_exact_inverse_and_linear_tails():
    gen = torch.Generator().manual_seed(0)
    params = 2 * torch.randn(1, 23, generator=gen, dtype=torch.float64).expand(2001, 23)
    x = torch.linspace(-5, 5, 2001, dtype=torch.float64)
    y, log_deriv = rational_quadratic(x, params, bound=3.0)
    assert (y.diff() > 0).all(), "strictly increasing"
    assert (y - x).abs().max() > 0.1, "a real spline, not the identity"
    outside = x.abs() >= 3
    torch.testing.assert_close(y[outside], x[outside], atol=0, rtol=0)  # slope-1 tails
    assert (log_deriv[outside] == 0).all()
    back, log_inv = rational_quadratic(y, params, bound=3.0, inverse=True)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_inv, -log_deriv, atol=1e-10, rtol=0)
    # the log-derivative is the derivative's log
    xs = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(rational_quadratic(xs, params, bound=3.0)[0].sum(), xs)
    torch.testing.assert_close(torch.log(grad), log_deriv, atol=1e-10, rtol=0)


def test_a_fresh_spline_coupling_is_the_identity():
    block = SplineCoupling(4, MLPConditioner(2, 2 * 23, 16, 0)).double()
    torch.nn.init.zeros_(block.conditioner.net[-1].weight)
    x = 2 * torch.randn(5, 4, dtype=torch.float64)
    out = block.forward_and_log_det(x)
    torch.testing.assert_close(out.out, x, atol=1e-14, rtol=0)
    torch.testing.assert_close(out.log_det, torch.zeros(5, dtype=torch.float64), atol=1e-14, rtol=0)


def test_a_spline_checkpoint_saves_loads_and_samples_the_same(tmp_path):
    torch.manual_seed(0)
    cfg = OneStepConfig(rank=2, depth=2, hidden=16, operator_hidden=16, coupling="spline")
    model = OneStepFlowMatching.build((4,), cfg, steps=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):  # trained a little: the splines are no longer the identity
        loss = model(torch.rand(32, 4))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    checkpoints.save(tmp_path / "model.pt", model, cfg, (4,))
    loaded, state = checkpoints.load(tmp_path / "model.pt")
    assert state["model_config"]["coupling"] == "spline"
    model.eval()
    x0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    b = model.collapse(10)
    torch.testing.assert_close(
        loaded.sample_one_step(x0, loaded.collapse(10)), model.sample_one_step(x0, b)
    )


def test_unknown_coupling_is_a_clear_error():
    with pytest.raises(ValueError, match="coupling must be one of affine, spline"):
        OneStepFlowMatching.build((4,), OneStepConfig(coupling="cubic"))
