"""The isotropic time operators: their collapse is their sampler, no direction is lost, the size
does not grow with ``D r hidden``, and a trained model inverts data to typical noise."""

from __future__ import annotations

import math

import pytest
import torch

from lincore import CouplingFlow
from lincore.fit import fit
from lincore.generators import LossWeights, OneStepFlowMatching
from lincore.identity_plus import IdentityPlusBasis
from lincore.metrics import typicality
from lincore.operators import TimeIsotropicLowRank, TimeLowRank, time_operator
from lincore.sampling import collapse, sample_latent
from lincore.testing import far_from_zero

F64 = torch.float64
ISOTROPIC = ("isotropic_psd", "isotropic_low_rank")


def operator(kind: str, dim: int = 24, rank: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    op = far_from_zero(time_operator(kind, dim, rank, hidden=32), seed=seed)
    return op.double().requires_grad_(False)


@pytest.mark.parametrize("kind", ISOTROPIC)
def test_the_batched_apply_is_the_matrix(kind):
    op = operator(kind)
    z = torch.randn(5, 24, dtype=F64)
    for t in (0.0, 0.2, 0.77):
        a = op.matrix_at(t, dtype=F64)
        assert isinstance(a, IdentityPlusBasis) and a.rank == 3
        direct = z @ a.dense().T
        torch.testing.assert_close(
            op(z, torch.full((5,), t, dtype=F64)), direct, atol=1e-12, rtol=0
        )


@pytest.mark.parametrize("kind", ISOTROPIC)
def test_a_starts_at_zero_and_ends_at_the_identity(kind):
    """``A_0 = 0`` (noise says nothing of data) and ``A_1 = I``: the velocity stays finite."""
    op = operator(kind)
    torch.testing.assert_close(op.matrix_at(0.0, dtype=F64).dense(), torch.zeros(24, 24, dtype=F64))
    torch.testing.assert_close(op.matrix_at(1.0, dtype=F64).dense(), torch.eye(24, dtype=F64))


@pytest.mark.parametrize("kind", ISOTROPIC)
@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("steps", [10, 100])
def test_collapse_equals_the_multi_step_sampler_and_keeps_rank_r(kind, method, steps):
    op = operator(kind, seed=steps)
    z0 = torch.randn(7, 24, dtype=F64)
    b = collapse(op, steps, method)
    assert b.factored and b.matrix.rank == 3  # never grows with T
    multi = sample_latent(op, z0, steps, method)
    assert (multi - z0).abs().max() > 0.1
    torch.testing.assert_close(b.apply(z0), multi, atol=1e-11 * (1 + multi.abs().max()), rtol=0)
    torch.testing.assert_close(b.solve(b.apply(z0)), z0, atol=1e-9, rtol=0)
    torch.testing.assert_close(b.logabsdet(), torch.linalg.slogdet(b.dense()).logabsdet)


@pytest.mark.parametrize("seed", range(4))
def test_psd_collapse_is_bounded_below_by_its_identity_coefficient(seed):
    """``s_min(B) >= beta = prod_i (1 - dt (1 - a_i) / (1 - t_i))`` for the Euler sampler."""
    op = operator("isotropic_psd", dim=32, rank=4, seed=seed)
    b = collapse(op, 100, "euler")
    s = torch.linalg.svdvals(b.dense())
    dt = 1 / 100
    a = [float(op.coefficient(torch.tensor(i * dt, dtype=F64))) for i in range(99)]
    beta = math.prod(1 - dt * (1 - a[i]) / (1 - i * dt) for i in range(99))
    assert b.floor == pytest.approx(beta, rel=1e-12)
    assert float(s.min()) >= beta * (1 - 1e-9)
    assert beta > 0.5  # the isotropic part carries the noise (rank-only keeps 1/T = 0.01)


def test_the_floor_is_the_isotropic_transport_and_rank_only_keeps_one_over_t():
    """Outside the low-rank part, ``B`` scales noise by ``sqrt(s / v)`` (the exact transport of
    ``N(0, v I)`` to ``N(0, s I)``); the original operator keeps exactly ``1 / T`` there."""
    op = operator("isotropic_psd")
    s, v = math.exp(float(op.log_signal)), math.exp(float(op.log_noise))
    assert collapse(op, 2000, "rk4").floor == pytest.approx(math.sqrt(s / v), rel=2e-3)
    torch.manual_seed(0)
    old = TimeLowRank(256, 1, hidden=16).double().requires_grad_(False)
    sv = torch.linalg.svdvals(collapse(old, 50, "euler").dense())
    # B = I / T + (rank <= 49): at least 256 - 2 * 49 singular values are exactly 1 / T
    assert int((sv - 1 / 50).abs().lt(1e-12).sum()) >= 256 - 2 * 49


def test_operator_size_does_not_grow_with_dim_rank_hidden():
    dim, rank, hidden = 3 * 64 * 64, 8, 128
    new = TimeIsotropicLowRank(dim, rank, hidden=hidden)
    old_last_layer = hidden * 2 * dim * rank
    n_new = sum(p.numel() for p in new.parameters())
    assert n_new < dim * rank + 40_000  # the basis plus a small time network
    assert old_last_layer > 100 * n_new


def test_a_trained_model_inverts_held_out_gaussian_data_to_typical_noise():
    """On ``N(m, C)`` data with a known answer, held-out points invert to ``|e|^2 / D ~ 1``."""
    torch.manual_seed(0)
    dim = 6
    mix = torch.randn(dim, dim) / dim**0.5
    data = torch.randn(6000, dim) @ mix.T * 0.7 + 0.5
    g = CouplingFlow(dim, 2, 32, conditional=True)
    m = OneStepFlowMatching(
        g, TimeIsotropicLowRank(dim, 2, hidden=32), weights=LossWeights.paper(data_likelihood=1.0)
    )
    fit(m, data[:5000], steps=400, batch_size=256, lr=3e-3)
    m.eval().double()
    b = m.collapse(100)
    held_out = typicality(m.invert(data[5000:].double(), b))
    assert 0.8 <= held_out["median_energy"] <= 1.25, held_out
    assert held_out["inside_shell"] > 0.9, held_out


def test_a_collapsed_sampler_does_not_follow_the_parameters_to_another_dtype():
    op = operator("isotropic_psd")
    b = collapse(op, 20)
    z = torch.randn(3, 24, dtype=F64)
    before = b.apply(z)
    op.float()
    torch.testing.assert_close(b.solve(b.apply(z)), z, atol=1e-10, rtol=0)
    assert torch.equal(b.apply(z), before)


@pytest.mark.parametrize("kind", ["isotropic_psd", "isotropic_low_rank", "low_rank"])
def test_singular_values_of_a_factored_collapse_match_the_dense_ones(kind):
    op = operator(kind, dim=40, rank=2, seed=5)
    b = collapse(op, 12, "euler")
    assert b.factored
    torch.testing.assert_close(
        b.singular_values(), torch.linalg.svdvals(b.dense()), atol=1e-10, rtol=1e-10
    )
