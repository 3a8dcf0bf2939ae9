"""The generator's principal directions: the SVD of the collapsed sampler through its factors,
edits along its directions in the induced space, the rank-k generator, and the command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lincore.generators import OneStepFlowMatching
from lincore.operators import time_operator
from lincore.sampling import CollapsedSampler, collapse
from lincore.spectrum import sampler_svd
from lincore.testing import far_from_identity, far_from_zero
from pipelines.commands import cli
from pipelines.errors import ConfigError, DataError
from pipelines.evaluation import directions, report
from pipelines.model import checkpoints

F64 = torch.float64
KINDS = ("isotropic_psd", "isotropic_low_rank", "low_rank")


def sampler(kind: str, method: str, dim: int = 24, rank: int = 3, form: str = "auto"):
    torch.manual_seed(0)
    op = far_from_zero(time_operator(kind, dim, rank, hidden=32), seed=1).double()
    return collapse(op.requires_grad_(False), 20, method, form=form)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_the_svd_through_the_factors_is_the_svd_of_b(kind, method):
    b = sampler(kind, method)
    svd = sampler_svd(b)
    dense = b.dense()
    torch.testing.assert_close(svd.values(), torch.linalg.svdvals(dense), atol=1e-10, rtol=0)
    eye = torch.eye(svd.k, dtype=F64)
    torch.testing.assert_close(svd.U.T @ svd.U, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(svd.V.T @ svd.V, eye, atol=1e-10, rtol=0)
    # B v_i = s_i u_i, for every direction held explicitly
    torch.testing.assert_close(dense @ svd.V, svd.U * svd.S, atol=1e-10, rtol=0)
    assert (svd.S[:-1] >= svd.S[1:]).all()
    if b.factored:  # the learned directions only, never a D x D
        assert svd.k < svd.dim and svd.U.shape == (svd.dim, svd.k)
        # every direction orthogonal to V keeps the floor: B w = +-|beta| w
        w = torch.randn(svd.dim, dtype=F64)
        w = w - svd.V @ (svd.V.T @ w)
        torch.testing.assert_close((dense @ w).abs(), svd.floor * w.abs(), atol=1e-10, rtol=0)


def test_a_dense_sampler_is_decomposed_whole():
    b = sampler("low_rank", "euler", form="dense")
    svd = sampler_svd(b)
    assert not b.factored and svd.k == svd.dim
    torch.testing.assert_close(svd.U @ torch.diag(svd.S) @ svd.V.T, b.dense(), atol=1e-10, rtol=0)


def test_the_effective_rank_of_an_isotropic_b_is_d_and_of_one_direction_is_near_one():
    dim = 16
    iso = sampler_svd(CollapsedSampler(2.0 * torch.eye(dim, dtype=F64)))
    assert iso.effective_rank() == pytest.approx(dim)
    spike = torch.diag(torch.tensor([1.0] + [1e-12] * (dim - 1), dtype=F64))
    assert sampler_svd(CollapsedSampler(spike)).effective_rank() == pytest.approx(1, abs=1e-6)


@pytest.fixture(scope="module")
def model():
    """A generator far from the identity and its factored sampler, in float64."""
    m = OneStepFlowMatching.build((1, 6, 6), rank=3, depth=2, hidden=16, operator_hidden=16)
    far_from_identity(m.g, seed=2)
    far_from_zero(m.operator, seed=3)
    m = m.double().eval()
    return m, m.collapse(20, "euler")


def test_an_edit_along_v_i_adds_its_scaled_u_i_in_the_induced_space(model):
    m, b = model
    svd = sampler_svd(b)
    z = m.encode(torch.randn(3, 1, 6, 6, dtype=F64), 0)
    x = m.decode(b.apply(z), 1)
    amounts = torch.tensor([-2.0, 0.5, 3.0], dtype=F64)
    for i in (0, svd.k - 1):
        edited = m.decode(b.apply(svd.edit(z, i, amounts).flatten(0, 1)), 1)
        u_image = m.decode(svd.U[:, i][None], 1)  # g^-1(u_i; 1)
        for j, a in enumerate(amounts.tolist()):
            # x ⊕ (a s_i) ⊙ g^-1(u_i; 1), by the induced space's own definitions
            scaled = m.decode(a * float(svd.S[i]) * m.encode(u_image, 1), 1)
            expected = m.decode(m.encode(x, 1) + m.encode(scaled, 1), 1)
            got = edited[j * 3 : (j + 1) * 3]
            torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)
        assert not torch.allclose(edited[:3], x)  # the edit moved the sample


def test_the_rank_k_generator_at_k_d_is_the_generator_and_refuses_other_ranks(model):
    m, b = model
    svd = sampler_svd(b)
    z = m.encode(torch.randn(4, 1, 6, 6, dtype=F64), 0)
    assert torch.equal(svd.project(z, svd.dim), z)
    top = svd.project(z, svd.k)
    torch.testing.assert_close(svd.project(top, svd.k), top, atol=1e-12, rtol=0)  # idempotent
    one = svd.project(z, 1)
    torch.testing.assert_close(one, (z @ svd.V[:, :1]) @ svd.V[:, :1].T, atol=1e-12, rtol=0)
    for bad in (0, svd.k + 1, svd.dim + 1):
        with pytest.raises(ValueError, match=f"k must be in 1..{svd.k}"):
            svd.project(z, bad)


def test_the_directions_of_a_model_are_drawn_and_measured(model):
    m, b = model
    svd = sampler_svd(b)
    strips = directions.edit_strips(m, b, svd, k=2)
    assert strips.shape == (2, len(directions.AMOUNTS), 1, 6, 6)
    middle = directions.AMOUNTS.index(0.0)  # the unedited sample sits in the middle column
    torch.testing.assert_close(strips[0, middle], strips[1, middle])
    ks, rank_k = directions.rank_k_samples(m, b, svd, n=3)
    assert ks[-1] == svd.dim and rank_k.shape == (len(ks), 3, 1, 6, 6)
    effects = directions.direction_effects(m, b, svd, lambda x: x.flatten(1)[:, :5], k=2, n=16)
    assert {"directions_pixel_ratio_1", "directions_feature_ratio_2"} <= effects.keys()
    assert all(np.isfinite(v) and v > 0 for v in effects.values())
    fig = report.directions_figure(strips.numpy(), svd.S[:2].numpy())
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0].startswith("v1 (s=") and len(labels) == 2


def test_a_dense_sampler_too_large_to_decompose_is_refused_in_one_line():
    with pytest.raises(directions.NoDirections, match="dense 4097 x 4097") as err:
        directions.decompose(CollapsedSampler(torch.zeros(1, 1)), 4097)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    from lincore.generators import OneStepConfig

    cfg = OneStepConfig(rank=3, depth=2, hidden=16, operator_hidden=16)
    m = OneStepFlowMatching.build((1, 6, 6), cfg)
    far_from_zero(m.operator, seed=3)
    path = tmp_path_factory.mktemp("dirs") / "model.pt"
    checkpoints.save(path, m, cfg, (1, 6, 6), run_name="t", source="test")
    return path


def test_the_directions_command_writes_the_strips(checkpoint, tmp_path, capsys):
    out = tmp_path / "d.png"
    cli.main(["directions", "--model", str(checkpoint), "--k", "3", "--out", str(out)])
    assert out.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "singular values of B (top 3)" in printed and "effective rank" in printed


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (["--k", "0"], ConfigError, "--k must be >= 1"),
        (["--k", "99"], ConfigError, r"--k 99 is more than the \d+ learned directions"),
        (["--model", "missing.pt"], DataError, "missing.pt"),
    ],
)
def test_the_directions_command_refuses_bad_input(checkpoint, tmp_path, args, error, message):
    argv = ["directions", "--model", str(checkpoint), "--out", str(tmp_path / "d.png"), *args]
    with pytest.raises(error, match=message) as err:
        cli.main(argv)
    assert "\n" not in str(err.value)


def test_the_directions_command_exits_2_with_one_line(checkpoint, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.commands.cli",
            "directions",
            "--model",
            str(checkpoint),
            "--k",
            "99",
            "--out",
            str(tmp_path / "d.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --k 99 is more than")


def test_the_svd_benchmark_agrees_with_the_dense_svd():
    from benchmarks.directions import main

    (row,) = main(["--dims", "48", "--rank", "3", "--steps", "10"])
    assert row["D"] == 48 and row["directions"] == 3
    assert row["max_abs_diff"] < 1e-10 and row["factored_svd_s"] > 0
