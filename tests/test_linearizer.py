"""The Linearizer against the definitions of linearity, in float64, on networks far from identity.

Every property is checked in the *induced* spaces (⊕, ⊙, <.,.>_g), never on raw tensors, and a
guard test shows the same checks fail for ordinary vector operations, so none is vacuous.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lincore import (
    Conditioned,
    CouplingFlow,
    DeepLinear,
    Dense,
    Idempotent,
    ImageFlow,
    Linearizer,
    LowRank,
    VectorSpace,
)
from lincore.testing import far_from_identity, relative_deviation

F64 = torch.float64
TOL = dict(atol=1e-9, rtol=1e-9)  # |a - b| <= 1e-9 (1 + |b|)


def flow(dim: int, seed: int, **kw) -> CouplingFlow:
    return far_from_identity(
        CouplingFlow(dim, 4, 16, seed=seed, **kw), strength=1.5, seed=seed
    ).double()


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture(scope="module")
def nets() -> dict[str, CouplingFlow]:
    nets = {"x": flow(3, 1), "y": flow(5, 2), "z": flow(4, 3), "w": flow(4, 4)}
    return {k: g.requires_grad_(False) for k, g in nets.items()}


def linearizers(nets) -> dict[str, Linearizer]:
    torch.manual_seed(0)
    return {
        "rectangular-low-rank": Linearizer(nets["x"], LowRank(3, 5, rank=2), nets["y"]),
        "square-dense": Linearizer(nets["z"], Dense(4, 4)),
        "wide-dense": Linearizer(nets["y"], Dense(5, 3), nets["x"]),
        "deep-linear": Linearizer(nets["z"], DeepLinear(4, 5, depth=3, hidden=2), nets["y"]),
    }


CASES = ["rectangular-low-rank", "square-dense", "wide-dense", "deep-linear"]


@pytest.fixture(params=CASES)
def f(request, nets) -> Linearizer:
    return linearizers(nets)[request.param].double().requires_grad_(False)


def test_networks_are_far_from_identity_and_nonlinear(nets):
    for g in nets.values():
        x = randn(16, g.dim)
        assert float((g(x) - x).norm() / x.norm()) > 0.5
        assert relative_deviation(g, x) > 0.05


def test_ordinary_linearity_fails_so_the_checks_below_are_not_vacuous(nets):
    f = linearizers(nets)["square-dense"].double().requires_grad_(False)
    x, x2 = randn(8, 4, seed=1), randn(8, 4, seed=2)
    assert float((f(2 * x + x2) - (2 * f(x) + f(x2))).abs().max()) > 1e-2


@settings(max_examples=25, deadline=None)
@given(
    a=st.floats(-3, 3), b=st.floats(-3, 3), seed=st.integers(0, 10_000), case=st.sampled_from(CASES)
)
def test_linearity_in_the_induced_spaces(nets, a, b, seed, case):
    f = linearizers(nets)[case].double().requires_grad_(False)
    X, Y = f.domain, f.codomain
    x, x2 = randn(6, f.g_x.dim, seed=seed), randn(6, f.g_x.dim, seed=seed + 1)
    lhs = f(X.add(X.scale(a, x), X.scale(b, x2)))
    rhs = Y.add(Y.scale(a, f(x)), Y.scale(b, f(x2)))
    torch.testing.assert_close(lhs, rhs, **TOL)
    torch.testing.assert_close(f(X.combine(a, x, b, x2)), Y.combine(a, f(x), b, f(x2)), **TOL)


def test_zero_negation_and_per_sample_scaling(f):
    X, Y = f.domain, f.codomain
    x = randn(5, f.g_x.dim, seed=3)
    torch.testing.assert_close(f(X.zero(like=x)), Y.zero(like=x), **TOL)
    torch.testing.assert_close(X.add(x, X.neg(x)), X.zero(like=x), **TOL)
    torch.testing.assert_close(f(X.neg(x)), Y.neg(f(x)), **TOL)
    a = torch.linspace(-2, 2, 5, dtype=F64)
    torch.testing.assert_close(f(X.scale(a, x)), Y.scale(a, f(x)), **TOL)
    torch.testing.assert_close(X.sub(x, x), X.zero(like=x), **TOL)


def test_vector_space_axioms_in_the_induced_space(nets):
    X = VectorSpace(nets["z"])
    x, x2, x3 = randn(4, 4, seed=1), randn(4, 4, seed=2), randn(4, 4, seed=3)
    torch.testing.assert_close(X.add(x, x2), X.add(x2, x), **TOL)
    torch.testing.assert_close(X.add(X.add(x, x2), x3), X.add(x, X.add(x2, x3)), **TOL)
    torch.testing.assert_close(X.scale(2.0, X.scale(-1.5, x)), X.scale(-3.0, x), **TOL)
    torch.testing.assert_close(X.scale(1.0, x), x, **TOL)
    torch.testing.assert_close(
        X.scale(0.5, X.add(x, x2)), X.add(X.scale(0.5, x), X.scale(0.5, x2)), **TOL
    )


def test_inner_product_and_norm(nets):
    X = VectorSpace(nets["z"])
    x, x2, x3 = randn(4, 4, seed=1), randn(4, 4, seed=2), randn(4, 4, seed=3)
    torch.testing.assert_close(X.inner(x, x2), X.inner(x2, x), **TOL)
    torch.testing.assert_close(
        X.inner(X.add(X.scale(2.5, x), x3), x2), 2.5 * X.inner(x, x2) + X.inner(x3, x2), **TOL
    )
    torch.testing.assert_close(X.norm(x) ** 2, X.inner(x, x), **TOL)
    assert bool((X.inner(x, x) > 0).all())
    torch.testing.assert_close(X.norm(X.zero(like=x)), torch.zeros(4, dtype=F64), **TOL)


def test_composition_is_one_linearizer_with_the_product_matrix(nets):
    k = Linearizer(nets["x"], LowRank(3, 5, rank=2), nets["y"]).double()
    f = Linearizer(nets["y"], Dense(5, 4), nets["z"]).double()
    h = f @ k
    assert h.g_x is nets["x"] and h.g_y is nets["z"]
    x = randn(7, 3, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(h(x), f(k(x)), **TOL)
        torch.testing.assert_close(h.A.matrix(), f.A.matrix() @ k.A.matrix(), **TOL)
        torch.testing.assert_close(f.compose(k)(x), h(x), **TOL)


def test_composition_with_a_different_middle_network_is_refused(nets):
    k = Linearizer(nets["x"], Dense(3, 4), nets["z"])
    f = Linearizer(nets["w"], Dense(4, 4))  # same dimension, different network
    with pytest.raises(ValueError, match="middle networks do not cancel"):
        f @ k
    with pytest.raises(TypeError, match="Linearizer"):
        f.compose(Dense(4, 4))


def test_composition_through_a_shared_conditional_network():
    g = flow(4, 7, conditional=True)
    noise, data = Conditioned(g, 0.0), Conditioned(g, 1.0)
    k = Linearizer(noise, Dense(4, 4), Conditioned(g, 1.0)).double()
    f = Linearizer(data, Dense(4, 4), noise).double()
    x = randn(5, 4, seed=8)
    with torch.no_grad():
        torch.testing.assert_close((f @ k)(x), f(k(x)), **TOL)
    with pytest.raises(ValueError, match="middle networks"):
        k @ k  # k.g_y binds cond 1.0, k.g_x binds cond 0.0


def test_svd_gives_singular_points_orthonormal_in_the_induced_inner_product(f):
    pts = f.singular_points()
    k = pts.values.numel()
    torch.testing.assert_close(f(pts.right), f.codomain.scale(pts.values, pts.left), **TOL)
    eye = torch.eye(k, dtype=F64)
    gx, gy = f.g_x(pts.right), f.g_y(pts.left)
    torch.testing.assert_close(gx @ gx.T, eye, **TOL)
    torch.testing.assert_close(gy @ gy.T, eye, **TOL)
    u, s, vh = f.svd()
    torch.testing.assert_close(u @ torch.diag(s) @ vh, f.A.matrix(), **TOL)


def test_pseudo_inverse_satisfies_the_four_penrose_conditions_in_the_induced_spaces(f):
    fp = f.pinv()
    assert fp.g_x is f.g_y and fp.g_y is f.g_x
    X, Y = f.domain, f.codomain
    x, x2 = randn(6, f.g_x.dim, seed=11), randn(6, f.g_x.dim, seed=12)
    y, y2 = randn(6, f.g_y.dim, seed=13), randn(6, f.g_y.dim, seed=14)
    torch.testing.assert_close(f(fp(f(x))), f(x), **TOL)  # f f+ f = f
    torch.testing.assert_close(fp(f(fp(y))), fp(y), **TOL)  # f+ f f+ = f+
    # f f+ and f+ f are self-adjoint under <.,.>_g
    torch.testing.assert_close(Y.inner(f(fp(y)), y2), Y.inner(y, f(fp(y2))), **TOL)
    torch.testing.assert_close(X.inner(fp(f(x)), x2), X.inner(x, fp(f(x2))), **TOL)


def test_pseudo_inverse_is_the_minimum_norm_least_squares_solution(f):
    X, Y = f.domain, f.codomain
    y = randn(6, f.g_y.dim, seed=21)
    x_star = f.pinv()(y)
    best = Y.norm(Y.sub(f(x_star), y))
    for seed in range(5):
        x = X.add(x_star, X.scale(0.3, randn(6, f.g_x.dim, seed=100 + seed)))
        assert bool((Y.norm(Y.sub(f(x), y)) >= best - 1e-9).all())
    # among exact least-squares solutions (x* ⊕ kernel), x* has the smallest ‖.‖_g
    null = torch.linalg.svd(f.A.matrix()).Vh[int(torch.linalg.matrix_rank(f.A.matrix())) :]
    if null.shape[0]:
        x_alt = X.add(x_star, X.from_latent(null[:1].expand(6, -1)))
        torch.testing.assert_close(Y.norm(Y.sub(f(x_alt), y)), best, **TOL)
        assert bool((X.norm(x_alt) > X.norm(x_star)).all())


def test_projection_onto_the_range(f):
    P = f.range_projector()
    Y = f.codomain
    y, y2 = randn(6, f.g_y.dim, seed=31), randn(6, f.g_y.dim, seed=32)
    torch.testing.assert_close(P(P(y)), P(y), **TOL)
    torch.testing.assert_close(Y.inner(P(y), y2), Y.inner(y, P(y2)), **TOL)
    x = randn(6, f.g_x.dim, seed=33)
    torch.testing.assert_close(f.project(f(x)), f(x), **TOL)  # points of the range stay
    dist = Y.norm(Y.sub(y, f.project(y)))
    for seed in range(5):  # no point of the range is closer
        other = f(randn(6, f.g_x.dim, seed=200 + seed))
        assert bool((Y.norm(Y.sub(y, other)) >= dist - 1e-9).all())


@settings(max_examples=20, deadline=None)
@given(
    rank=st.integers(1, 3),
    kind=st.sampled_from(["orthogonal", "oblique"]),
    scale=st.floats(0.01, 100.0),
    seed=st.integers(0, 10_000),
)
def test_idempotent_linearizer_is_a_projector_for_every_input(nets, rank, kind, scale, seed):
    torch.manual_seed(seed)
    p = Linearizer(nets["z"], Idempotent(4, rank=rank, kind=kind)).double().requires_grad_(False)
    with torch.no_grad():
        for w in p.A.parameters():
            w.add_(0.5 * torch.randn_like(w))
    x = scale * randn(8, 4, seed=seed)
    px = p(x)
    torch.testing.assert_close(p(px), px, atol=1e-9 * max(1.0, float(px.abs().max())), rtol=0)
    assert float((px - x).abs().max()) > 1e-3  # a real projection, not the identity


def test_image_linearizer_float32_round_trip_and_projection():
    g = far_from_identity(ImageFlow(1, 8, 8, depth=4, hidden=16))
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        rt = float((g.inverse(g(x)) - x).abs().max())
        assert rt < 1e-5, f"float32 round-trip error {rt:.1e}"
        p = Linearizer(g, Idempotent(64, rank=10))
        px = p(x)
        torch.testing.assert_close(p(px), px, atol=1e-4, rtol=0)


def test_construction_errors_name_the_problem(nets):
    with pytest.raises(ValueError, match="build A with dim_in=3, dim_out=5"):
        Linearizer(nets["x"], Dense(4, 5), nets["y"])
    with pytest.raises(TypeError, match="g_x must be a lincore Flow"):
        Linearizer(torch.nn.Linear(3, 3), Dense(3, 3))
    with pytest.raises(TypeError, match="A must be a lincore LinearOperator"):
        Linearizer(nets["x"], torch.nn.Linear(3, 3))
    f = Linearizer(nets["x"], Dense(3, 5), nets["y"])
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        f(torch.randn(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="NaN or inf"):
        f(torch.full((2, 3), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match=r"\(4,\) tensor"):
        f.domain.scale(torch.ones(3, dtype=F64), torch.randn(4, 3, dtype=F64))
