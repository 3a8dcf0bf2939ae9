"""Linear operators: batched apply = matrix, factorised SVD/pinv = dense, exact idempotency."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lincore import Composed, DeepLinear, Dense, Factored, Idempotent, LowRank

F64 = torch.float64  # every check here runs in float64
OPERATORS = {
    "dense": lambda: Dense(7, 5),
    "low-rank": lambda: LowRank(7, 5, rank=3),
    "idempotent": lambda: Idempotent(7, rank=3),
    "idempotent-oblique": lambda: Idempotent(7, rank=3, kind="oblique"),
    "deep-linear": lambda: DeepLinear(7, 5, depth=3),
    "deep-linear-narrow": lambda: DeepLinear(7, 5, depth=3, hidden=2),
    "deep-linear-1": lambda: DeepLinear(7, 5, depth=1),
    "composed": lambda: Composed(LowRank(4, 5, rank=2), Dense(7, 4)),
}


def build(name: str):
    torch.manual_seed(0)
    op = OPERATORS[name]().double()
    with torch.no_grad():  # break the oblique projector's symmetric start
        for p in op.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return op


@pytest.mark.parametrize("name", OPERATORS)
def test_batched_apply_equals_the_matrix(name):
    op = build(name)
    z = torch.randn(6, op.dim_in, dtype=F64)
    torch.testing.assert_close(op(z), z @ op.matrix().T, atol=1e-12, rtol=0)
    f = op.factors()
    if f is not None:
        torch.testing.assert_close(f[0] @ f[1].T, op.matrix(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", OPERATORS)
def test_svd_reconstructs_and_matches_dense_singular_values(name):
    op = build(name)
    u, s, vh = op.svd()
    m = op.matrix()
    torch.testing.assert_close(u @ torch.diag(s) @ vh, m, atol=1e-12, rtol=0)
    torch.testing.assert_close(u.T @ u, torch.eye(s.numel(), dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(vh @ vh.T, torch.eye(s.numel(), dtype=F64), atol=1e-12, rtol=0)
    dense_s = torch.linalg.svdvals(m)
    k = min(s.numel(), dense_s.numel())
    torch.testing.assert_close(s[:k], dense_s[:k], atol=1e-12, rtol=0)
    assert bool((dense_s[k:] < 1e-12).all()), "the factorised SVD dropped a non-zero singular value"


@pytest.mark.parametrize("name", OPERATORS)
def test_pinv_satisfies_the_four_penrose_conditions(name):
    op = build(name)
    a, p = op.matrix(), op.pinv().matrix()
    torch.testing.assert_close(a @ p @ a, a, atol=1e-10, rtol=0)
    torch.testing.assert_close(p @ a @ p, p, atol=1e-10, rtol=0)
    torch.testing.assert_close(a @ p, (a @ p).T, atol=1e-10, rtol=0)
    torch.testing.assert_close(p @ a, (p @ a).T, atol=1e-10, rtol=0)
    torch.testing.assert_close(p, torch.linalg.pinv(a), atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", OPERATORS)
def test_range_projector_is_the_orthogonal_projector_onto_the_range(name):
    op = build(name)
    a, pr = op.matrix(), op.range_projector().matrix()
    torch.testing.assert_close(pr @ pr, pr, atol=1e-12, rtol=0)
    torch.testing.assert_close(pr, pr.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(pr @ a, a, atol=1e-10, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(2, 40),
    data=st.data(),
    kind=st.sampled_from(["orthogonal", "oblique"]),
    scale=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_idempotent_for_any_weights(dim, data, kind, scale, seed):
    rank = data.draw(st.integers(1, dim - 1))
    op = Idempotent(dim, rank=rank, kind=kind).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in op.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=F64))
    with torch.no_grad():
        m = op.matrix()
    torch.testing.assert_close(m @ m, m, atol=1e-8 * float(m.norm()), rtol=0)
    assert int(torch.linalg.matrix_rank(m)) == rank
    z = torch.randn(4, dim, generator=gen, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(op(op(z)), op(z), atol=1e-8 * float(m.norm() * z.norm()), rtol=0)


def test_factored_is_a_fixed_operator():
    f = Factored(torch.randn(5, 2, dtype=F64), torch.randn(3, 2, dtype=F64))
    assert list(f.parameters()) == []
    assert f.shape == (5, 3)


@pytest.mark.parametrize(
    ("build_op", "match"),
    [
        (lambda: LowRank(4, 3, rank=4), r"rank must be in 1\.\.3"),
        (lambda: LowRank(4, 3, rank=0), r"rank must be in 1\.\.3"),
        (lambda: Idempotent(4, rank=4), r"rank must be in 1\.\.3.*identity"),
        (lambda: Idempotent(4, rank=2, kind="skew"), "orthogonal' or 'oblique"),
        (lambda: DeepLinear(4, 3, depth=0), "depth must be >= 1"),
        (lambda: Dense(0, 3), "dim_in must be >= 1"),
        (lambda: Composed(Dense(3, 2), Dense(4, 5)), r"inner maps to R\^5 but outer takes R\^3"),
        (lambda: Factored(torch.ones(3, 2), torch.ones(4, 1)), "must share k"),
        (lambda: LowRank(4, 3, rank=1.5), "rank must be an int"),
    ],
)
def test_impossible_operators_are_clear_errors(build_op, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_op()


def test_wrong_input_shape_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"shape \(B, 4\), got \(2, 3\)"):
        LowRank(4, 3, rank=2)(torch.randn(2, 3))
