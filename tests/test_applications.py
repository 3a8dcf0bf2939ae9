"""The paper's two other applications, against their definitions, in float64 on networks far from
the identity: the projective generator is idempotent for any input and any weights; style
interpolation in the operator is exactly interpolation in the induced output space."""

from __future__ import annotations

import pytest
import torch

from lincore import CouplingFlow, ImageFlow, VectorSpace, filters
from lincore.fit import fit
from lincore.generators import ProjectiveGenerator, StyleTransfer
from lincore.operators import DepthwiseConv
from lincore.testing import far_from_identity, relative_deviation
from lincore.toys import toy

F64 = torch.float64
TOL = {"atol": 1e-9, "rtol": 1e-9}


def projective(shape, rank, *, kind="orthogonal", flow="coupling", seed=0):
    p = ProjectiveGenerator.build(shape, rank, depth=4, hidden=32, flow=flow, kind=kind, seed=seed)
    far_from_identity(p.g, strength=1.5, seed=seed)
    with torch.no_grad():  # a projector far from any axis, and (oblique) far from orthogonal
        p.P.u.copy_(torch.randn(p.P.u.shape, generator=torch.Generator().manual_seed(seed)))
        if p.P.v is not None:
            p.P.v.add_(0.5 * torch.randn(p.P.v.shape))
    return p.double()


def inputs(shape, n=64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.cat(
        [  # Gaussian noise, wide noise, and uniform inputs: "any input"
            torch.randn(n, *shape, generator=gen, dtype=F64),
            5 * torch.randn(n, *shape, generator=gen, dtype=F64),
            torch.rand(n, *shape, generator=gen, dtype=F64),
        ]
    )


@pytest.mark.parametrize(
    ("shape", "rank", "kind", "flow"),
    [
        ((2,), 1, "orthogonal", "coupling"),
        ((6,), 3, "oblique", "coupling"),
        ((1, 8, 8), 16, "orthogonal", "coupling"),
        ((1, 8, 8), 5, "oblique", "image"),
    ],
)
def test_the_projective_generator_is_idempotent_for_any_input(shape, rank, kind, flow):
    p = projective(shape, rank, kind=kind, flow=flow)
    x = inputs(shape)
    assert relative_deviation(p.g, x) > 0.3  # g is far from linear
    with torch.no_grad():
        fx = p.project(x)
        ffx = p.project(fx)
        assert (fx - x).abs().max() > 0.1  # f is not the identity ...
        scale = 1 + float(fx.abs().max())  # f of wide noise can be large: round-off scales
        torch.testing.assert_close(ffx, fx, atol=1e-9 * scale, rtol=1e-9)  # ... but f o f = f
        # and f(x) is where its coordinates say: g^-1(L c) with c = R^T g(x)
        left, _ = p.P.factors()
        torch.testing.assert_close(
            p.g.inverse((p.coordinates(x) @ left.T).view(-1, *shape)),
            fx,
            atol=1e-9 * scale,
            rtol=1e-9,
        )
        assert p.idempotency_error(x) < 1e-9


def test_idempotency_survives_training_and_data_become_near_fixed_points():
    torch.manual_seed(0)
    data = toy("moons", 2000, seed=0).double()
    p = ProjectiveGenerator.build((2,), 1, depth=4, hidden=32).double()
    with torch.no_grad():
        before = (p.project(data) - data).pow(2).mean().item()
    losses = fit(p, data, steps=150, batch_size=256, lr=3e-3)
    with torch.no_grad():
        after = (p.project(data) - data).pow(2).mean().item()
    assert after < 0.7 * before and losses[-1] < losses[0]
    assert p.idempotency_error(inputs((2,))) < 1e-9
    terms = p(data[:256])
    assert set(terms) == {"reconstruction", "distribution", "loss"}
    terms["loss"].backward()
    assert all(q.grad is not None for q in p.parameters() if q.requires_grad)


@pytest.mark.parametrize("rank", [0, 2, True, 1.5])
def test_an_impossible_projector_rank_names_the_argument(rank):
    with pytest.raises(ValueError, match=r"rank must be an integer in 1\.\.1"):
        ProjectiveGenerator.build((2,), rank)


def style_model(seed=0, shape=(3, 4, 4)):
    torch.manual_seed(seed)
    m = StyleTransfer.build(shape, styles=3, depth=3, hidden=16, seed=seed)
    far_from_identity(m.g, strength=1.0, seed=seed)
    with torch.no_grad():
        for op in m.operators:
            op.kernel.add_(0.5 * torch.randn(op.kernel.shape))
    return m.double()


def test_style_interpolation_is_linear_in_the_operator():
    m = style_model()
    x = torch.rand(5, 3, 4, 4, dtype=F64)
    Y = VectorSpace(m.g_style)
    with torch.no_grad():
        f1, f2 = m.transfer(x, 0), m.transfer(x, 1)
        assert (f1 - f2).abs().max() > 0.1  # swapping the operator changes the style
        for alpha in (0.0, 0.3, 1.0, 1.7):
            mixed = m.interpolate(x, 0, 1, [alpha])[0]
            expected = Y.add(Y.scale(alpha, f1), Y.scale(1 - alpha, f2))
            torch.testing.assert_close(mixed, expected, **TOL)
        a = m.mix(0.3, 0, 1)
        torch.testing.assert_close(
            a.matrix(), 0.3 * m.operators[0].matrix() + 0.7 * m.operators[1].matrix(), **TOL
        )
        torch.testing.assert_close(m.interpolate(x, 0, 1, [1.0])[0], f1, **TOL)


def test_depthwise_conv_matrix_is_its_action():
    op = DepthwiseConv(2, 3, 5, kernel_size=3).double()
    with torch.no_grad():
        op.kernel.copy_(torch.randn(op.kernel.shape, dtype=F64))
    z = torch.randn(4, 30, dtype=F64)
    torch.testing.assert_close(op(z), z @ op.matrix().T, **TOL)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        DepthwiseConv(1, 4, 4, kernel_size=2)


def test_a_new_style_fits_only_its_operator_with_g_frozen():
    torch.manual_seed(0)
    m = StyleTransfer.build((3, 8, 8), styles=2, depth=2, hidden=8)
    content = torch.rand(32, 3, 8, 8)
    m.initialize_from(content)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    k = m.add_style()
    m.freeze_network()
    for op in list(m.operators)[:k]:
        op.requires_grad_(False)
    m.fit_styles = [k]
    target = filters.blur(content)
    start = m.style_loss(content, target, k).item()
    fit(m, torch.stack([content, target], 1), steps=40, batch_size=16, lr=2e-2)
    assert m.style_loss(content, target, k).item() < 0.7 * start
    after = m.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # g, old styles kept
    assert not torch.equal(after[f"operators.{k}.kernel"], m.mix(1.0, 0, 0).kernel)


def test_bad_style_input_names_the_argument():
    m = StyleTransfer.build((3, 8, 8), styles=2, depth=1, hidden=8)
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(IndexError, match=r"style must be in 0\.\.1, got 2"):
        m.transfer(x, 2)
    with pytest.raises(ValueError, match=r"content .* and style target .* same shape"):
        m.style_loss(x, torch.rand(2, 3, 4, 4), 0)
    with pytest.raises(ValueError, match=r"content images must have shape \(B, 3, 8, 8\)"):
        m.transfer(torch.rand(2, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="too small or odd for the 2x2 squeeze"):
        StyleTransfer.build((3, 1, 1), styles=1)
    with pytest.raises(ValueError, match=r"batch must be \(B, 1 \+ 2"):
        m(torch.rand(2, 2, 3, 8, 8))
    with pytest.raises(TypeError, match="conditional=True"):
        StyleTransfer(ImageFlow(3, 8, 8, depth=1, hidden=8), styles=1)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        StyleTransfer(CouplingFlow(4, 1, 8, conditional=True), styles=1)


@pytest.mark.parametrize("name", sorted(filters.FILTERS))
def test_filters_keep_shape_and_range(name):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = filters.apply(name, x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert (y - x).abs().max() > 0.05  # it does something


def test_filter_definitions():
    flat = torch.full((1, 3, 8, 8), 0.4)
    torch.testing.assert_close(filters.blur(flat), flat)  # a blur keeps a constant image
    torch.testing.assert_close(filters.emboss(flat), flat * 0 + 0.5)  # no relief on a flat one
    assert len(torch.unique(filters.posterise(torch.rand(1, 1, 32, 32)))) <= 4
    with pytest.raises(ValueError, match="sepia needs RGB"):
        filters.sepia(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="unknown style filter 'oil'"):
        filters.apply("oil", flat)


def test_the_projective_command_writes_its_report(tmp_path):
    import json

    from pipelines.commands import projective

    rows = projective.main(
        [
            "--data",
            "moons",
            "--ranks",
            "1",
            "--seconds",
            "1",
            "--depth",
            "2",
            "--hidden",
            "16",
            "--out",
            str(tmp_path),
        ]
    )
    assert rows[0]["idempotency_error"] < 1e-9 and rows[0]["steps"] > 0
    saved = json.loads((tmp_path / "moons_metrics.json").read_text())
    assert saved[0]["rank"] == 1 and "reconstruction_mse" in saved[0] and "mmd" in saved[0]
    assert (tmp_path / "moons_rank1.png").read_bytes()[:4] == b"\x89PNG"


def test_the_style_command_writes_its_report(tmp_path):
    from pipelines.commands import style

    out = style.main(
        [
            "--styles",
            "sepia",
            "blur",
            "--new-style",
            "emboss",
            "--seconds",
            "2",
            "--depth",
            "1",
            "--hidden",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    routes = [(r["style"], r["route"]) for r in out["rows"]]
    assert routes[:2] == [("sepia", "joint (g + operators)"), ("blur", "joint (g + operators)")]
    assert {r["route"] for r in out["rows"][2:]} == {
        "new operator, g frozen",
        "from scratch (g + operator)",
    }
    assert all(r["psnr"] > 0 for r in out["rows"])
    for name in ("styles.png", "interpolation_blur_to_sepia.png", "metrics.json"):
        assert (tmp_path / name).exists()
