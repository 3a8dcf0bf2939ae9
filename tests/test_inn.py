"""Invertible networks against their definitions: exact inverse, log-det = log|det J|, state."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from lincore import Conditioned, CouplingFlow, ImageFlow
from lincore.inn import (
    ActNorm,
    AffineCoupling,
    ConvConditioner,
    Inverse,
    InvertibleConv1x1,
    MLPConditioner,
    Permutation,
    Squeeze,
)
from lincore.testing import far_from_identity, relative_deviation

SHAPES = [(64,), (1, 8, 8), (3, 64, 64)]


def make_flow(shape: tuple[int, ...], depth: int, **kw) -> CouplingFlow | ImageFlow:
    if len(shape) == 1:
        return CouplingFlow(shape[0], depth, 32, **kw)
    return ImageFlow(*shape, depth=depth, hidden=16, **kw)


def flow_cases() -> list:
    return [
        pytest.param(s, d, id=f"{'x'.join(map(str, s))}-depth{d}") for s in SHAPES for d in (1, 32)
    ]


@pytest.mark.parametrize(("shape", "depth"), flow_cases())
def test_flow_round_trip_float64(shape, depth):
    g = far_from_identity(make_flow(shape, depth)).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    z = g(x).detach()
    assert float((z - x).norm() / x.norm()) > 0.5, "the network must be far from the identity"
    assert relative_deviation(g, x) > 0.05, "the network must be non-linear"
    torch.testing.assert_close(g.inverse(z), x, atol=1e-10, rtol=0)
    w = torch.randn_like(x)
    torch.testing.assert_close(g(g.inverse(w)), w, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("shape", "depth"), flow_cases())
def test_flow_round_trip_float32(shape, depth):
    g = far_from_identity(make_flow(shape, depth))
    x = torch.randn(3, *shape)
    torch.testing.assert_close(g.inverse(g(x)), x, atol=1e-4, rtol=0)
    w = torch.randn_like(x)
    torch.testing.assert_close(g(g.inverse(w)), w, atol=1e-4, rtol=0)


def random_blocks(shape: tuple[int, ...]) -> list:
    c = shape[0]
    cond_net = MLPConditioner if len(shape) == 1 else ConvConditioner
    blocks = [
        ActNorm(c),
        AffineCoupling(c, cond_net(c // 2, 2 * (c - c // 2), 16, 0)),
        Permutation(c, seed=3),
        InvertibleConv1x1(c, seed=4),
    ]
    blocks.append(Inverse(AffineCoupling(c, cond_net(c // 2, 2 * (c - c // 2), 16, 0))))
    if len(shape) == 3:
        blocks.append(Squeeze())
    with torch.no_grad():
        for b in blocks:  # push each block away from the identity, O(1) per output
            for p in b.parameters():
                p.add_(0.3 * torch.randn_like(p) / p.shape[-1] ** 0.5)
            if isinstance(b, ActNorm):
                b.initialized.fill_(True)
    return blocks


@pytest.mark.parametrize("shape", [(5,), (64,), (2, 4, 4), (3, 8, 8)], ids=str)
def test_every_block_round_trips_and_has_exact_log_det(shape):
    torch.manual_seed(0)
    small = int(torch.tensor(shape).prod()) <= 64
    for block in random_blocks(shape):
        block = block.double()
        x = torch.randn(2, *shape, dtype=torch.float64)
        out = block.forward_and_log_det(x)
        torch.testing.assert_close(block.inverse(out.out), x, atol=1e-10, rtol=0)
        torch.testing.assert_close(out.out, block(x), atol=0, rtol=0)
        if small:
            jac = jacobian(lambda v, b=block: b(v.unsqueeze(0))[0].flatten(), x[0])
            jac = jac.reshape(x[0].numel(), x[0].numel())
            expected = torch.linalg.slogdet(jac).logabsdet
            torch.testing.assert_close(out.log_det[0], expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "g",
    [
        pytest.param(lambda: CouplingFlow(3, 4, 16), id="coupling-odd-dim"),
        pytest.param(lambda: CouplingFlow(4, 3, 16, actnorm=True), id="coupling-actnorm"),
        pytest.param(lambda: ImageFlow(1, 4, 4, depth=2, hidden=8), id="image-1x4x4"),
        pytest.param(lambda: ImageFlow(2, 2, 3, depth=2, hidden=8), id="image-2x2x3"),
    ],
)
def test_flow_log_det_matches_autograd_jacobian(g):
    g = far_from_identity(g(), strength=1.5).double()
    x = torch.randn(3, *g.event_shape, dtype=torch.float64)
    out = g.forward_and_log_det(x)
    for i in range(3):
        jac = jacobian(lambda v: g(v.unsqueeze(0))[0].flatten(), x[i]).reshape(g.dim, g.dim)
        expected = torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(out.log_det[i], expected, atol=1e-9, rtol=0)
        # the inverse's Jacobian is the inverse of the forward's
        jac_inv = jacobian(lambda w: g.inverse(w.unsqueeze(0))[0].flatten(), out.out[i])
        jac_inv = jac_inv.reshape(g.dim, g.dim)
        torch.testing.assert_close(
            jac_inv @ jac, torch.eye(g.dim, dtype=torch.float64), atol=1e-9, rtol=0
        )


@pytest.mark.parametrize(
    "g",
    [CouplingFlow(5, 3, 16, actnorm=True), ImageFlow(1, 4, 4, depth=2, hidden=8)],
    ids=["vector", "image"],
)
def test_every_parameter_gets_a_gradient(g):
    g = far_from_identity(g)
    x = torch.randn(4, *g.event_shape)
    loss = g(x).square().mean() + g.inverse(x).square().mean()
    loss.backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"{name} got no gradient"


def test_state_dict_round_trip_keeps_actnorm_initialised(tmp_path):
    g = ImageFlow(1, 8, 8, depth=2, hidden=8)
    x = torch.rand(16, 1, 8, 8)
    g.initialize_from(x)
    assert g(x).shape == x.shape
    torch.save(g.state_dict(), tmp_path / "g.pt")
    h = ImageFlow(1, 8, 8, depth=2, hidden=8, seed=1)
    with pytest.raises(RuntimeError, match="initialize_from"):
        h(x)
    h.load_state_dict(torch.load(tmp_path / "g.pt", weights_only=True))
    torch.testing.assert_close(h(x), g(x), atol=0, rtol=0)
    torch.testing.assert_close(h.inverse(g(x)), x, atol=1e-5, rtol=0)


def test_actnorm_initialisation_normalises_the_batch():
    g = ImageFlow(2, 4, 4, depth=1, hidden=8)
    x = 3 + 5 * torch.randn(64, 2, 4, 4)
    g.initialize_from(x)
    actnorm = g.body.blocks[0]
    y = actnorm(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(2), atol=1e-4, rtol=0)


def test_inverse_before_initialisation_is_an_error_not_a_pass_through():
    g = ImageFlow(1, 4, 4, depth=1, hidden=8)
    with pytest.raises(RuntimeError, match="not initialised"):
        g.inverse(torch.randn(2, 1, 4, 4))


def test_domain_condition_selects_a_different_bijection():
    g = far_from_identity(CouplingFlow(4, 3, 16, conditional=True)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    z0, z1 = g(x, cond=0.0).detach(), g(x, cond=1.0).detach()
    assert float((z0 - z1).abs().max()) > 1e-3
    torch.testing.assert_close(g.inverse(z0, cond=0.0), x, atol=1e-10, rtol=0)
    torch.testing.assert_close(g.inverse(z1, cond=1.0), x, atol=1e-10, rtol=0)
    per_sample = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    mixed = g(x, cond=per_sample)
    torch.testing.assert_close(mixed[0::2], z0[0::2], atol=1e-12, rtol=0)
    torch.testing.assert_close(mixed[1::2], z1[1::2], atol=1e-12, rtol=0)
    noise = Conditioned(g, 0.0)
    torch.testing.assert_close(noise(x), z0, atol=0, rtol=0)
    assert set(map(id, noise.parameters())) == set(map(id, g.parameters()))


def test_conditional_image_flow_round_trips():
    g = far_from_identity(ImageFlow(3, 4, 4, depth=2, hidden=8, conditional=True)).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for c in (0.0, 1.0):
        torch.testing.assert_close(g.inverse(g(x, cond=c), cond=c), x, atol=1e-10, rtol=0)
    with torch.no_grad():
        assert float((g(x, cond=0.0) - g(x, cond=1.0)).abs().max()) > 1e-3


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: CouplingFlow(1, 2, 8), "dim must be >= 2"),
        (lambda: CouplingFlow(4, 0, 8), "depth must be >= 1"),
        (lambda: CouplingFlow(2.5, 2, 8), "dim must be an int"),
        (lambda: ImageFlow(1, 7, 8, depth=1, hidden=8), "height and width must be even"),
        (lambda: AffineCoupling(1, MLPConditioner(1, 2, 4, 0)), "add a Squeeze first"),
        (lambda: Conditioned(CouplingFlow(2, 1, 4), 0.0), "conditional=True"),
    ],
)
def test_bad_construction_is_a_clear_error(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_bad_calls_are_clear_errors():
    g = CouplingFlow(4, 2, 8)
    with pytest.raises(ValueError, match=r"shape \(B, 4\), got \(3, 5\)"):
        g(torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN or inf"):
        g(torch.tensor([[0.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        g.inverse(torch.tensor([[0.0, float("inf"), 0.0, 0.0]]))
    with pytest.raises(TypeError, match="floating"):
        g(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        g([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match="unconditional"):
        g(torch.randn(2, 4), cond=1.0)
    c = CouplingFlow(4, 2, 8, conditional=True)
    with pytest.raises(ValueError, match=r"cond=0\.0 \(noise domain\)"):
        c(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(2,\) tensor"):
        c(torch.randn(2, 4), cond=torch.zeros(3))
    with pytest.raises(ValueError, match=r"bound to 1\.0"):
        Conditioned(c, 1.0)(torch.randn(2, 4), cond=0.0)
