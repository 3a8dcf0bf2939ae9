"""The collapsed sampler is the multi-step sampler (Euler and true RK4), in both of its forms."""

from __future__ import annotations

import pytest
import torch

from lincore.identity_plus import IdentityPlusLowRank
from lincore.operators.time_low_rank import TimeLowRank
from lincore.sampling import collapse, sample_latent, step_matrix

F64 = torch.float64


def operator(dim: int, rank: int, seed: int = 0) -> TimeLowRank:
    torch.manual_seed(seed)
    return TimeLowRank(dim, rank, hidden=32).double().requires_grad_(False)


@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize(("dim", "rank", "steps"), [(64, 2, 10), (64, 2, 100), (6, 2, 12)])
def test_one_matrix_equals_the_multi_step_sampler(method, dim, rank, steps):
    op = operator(dim, rank)
    z0 = torch.randn(7, dim, dtype=F64)
    b = collapse(op, steps, method)
    assert b.factored == ((steps - 1) * rank * (3 if method == "rk4" else 1) < dim)
    torch.testing.assert_close(
        b.apply(z0), sample_latent(op, z0, steps, method), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(b.solve(b.apply(z0)), z0, atol=1e-10, rtol=0)


def test_euler_collapse_keeps_exactly_one_over_t_of_the_identity():
    op = operator(128, 1)
    b = collapse(op, 20, "euler")
    assert b.factored and b.matrix.rank == 19
    assert abs(float(b.matrix.alpha) - 1 / 20) < 1e-15


def test_factored_and_dense_products_agree():
    op = operator(32, 2)
    m1 = step_matrix(op, 0.1, 0.05, "rk4", dtype=F64)
    m2 = step_matrix(op, 0.3, 0.05, "euler", dtype=F64)
    torch.testing.assert_close((m1 @ m2).dense(), m1.dense() @ m2.dense(), atol=1e-13, rtol=0)
    torch.testing.assert_close((m1 + m2).dense(), m1.dense() + m2.dense(), atol=1e-13, rtol=0)
    torch.testing.assert_close(m1.compressed().dense(), m1.dense(), atol=1e-13, rtol=0)
    assert m1.compressed().rank <= 3 * 2
    z = torch.randn(3, 32, dtype=F64)
    torch.testing.assert_close(m1.apply(m1.solve(z)), z, atol=1e-12, rtol=0)
    eye = IdentityPlusLowRank.identity(32, like=z)
    torch.testing.assert_close(eye.dense(), torch.eye(32, dtype=F64), atol=0, rtol=0)


def test_rk4_is_fourth_order_and_euler_first_order():
    """Halving dt divides the error by ~16 for true RK4 (the reference's 'rk' would give ~2)."""
    op = operator(8, 2, seed=1)
    z0 = torch.randn(4, 8, dtype=F64)
    # the sampler ends at t = (T-1)/T, which moves with T: compare flow maps to t = 1/2 instead
    ratios = {}
    for method in ("euler", "rk4"):
        errs = []
        fine = sample_half(op, z0, 640, "rk4")
        for steps in (20, 40):
            errs.append(float((sample_half(op, z0, steps, method) - fine).abs().max()))
        ratios[method] = errs[0] / errs[1]
    assert 1.6 < ratios["euler"] < 2.5, ratios
    assert ratios["rk4"] > 12, ratios


def sample_half(op: TimeLowRank, z0: torch.Tensor, steps: int, method: str) -> torch.Tensor:
    """Product of the first ``steps / 2`` step matrices: the flow map from t = 0 to t = 1/2."""
    dt = 1.0 / steps
    z = z0
    for i in range(steps // 2):
        z = step_matrix(op, i * dt, dt, method, dtype=F64).apply(z)
    return z


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda op: collapse(op, 10, "heun"), r"one of \('euler', 'rk4'\)"),
        (lambda op: collapse(op, 1, "euler"), "steps must be >= 2"),
        (lambda op: sample_latent(op, torch.zeros(1, 4, dtype=F64), 10, "midpoint"), "method"),
        (lambda op: TimeLowRank(4, 5), r"rank must be in 1\.\.4"),
    ],
)
def test_bad_sampler_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(operator(4, 1))


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_forced_forms_agree(method):
    op = operator(24, 3)
    z0 = torch.randn(5, 24, dtype=F64)
    dense = collapse(op, 15, method, form="dense")
    factored = collapse(op, 15, method, form="factored")
    assert not dense.factored and factored.factored
    torch.testing.assert_close(dense.apply(z0), factored.apply(z0), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        dense.logabsdet(), torch.linalg.slogdet(factored.dense()).logabsdet, atol=1e-10, rtol=0
    )
    torch.testing.assert_close(factored.logabsdet(), dense.logabsdet(), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="form must be"):
        collapse(op, 15, method, form="sparse")
