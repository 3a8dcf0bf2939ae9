"""The project's frame: README commands, CI script, pins, demo and benchmark entry points."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert first_block, "README must open with a code block of set-up commands"
    return [
        line
        for line in first_block.group(1).splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_second():
    commands = readme_commands()
    assert len(commands) == 2
    assert "torch==2.13.0" in commands[0] and "torch==2.13.0" in commands[1]
    assert commands[0].endswith("dvc repro"), "the main job is the DVC pipeline"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands[1], ".ci/run must call the README's test command verbatim"


def test_torch_is_pinned_in_the_install_path():
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()


def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Float32 agreement: a far-from-identity D=2 flow round-trips to ~2e-6 (README table)."""
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=what)


def check_readme_claims(ns: dict) -> None:
    """What the README's tour says of its objects, recomputed through those objects."""
    g, f, X, Y, x = ns["g"], ns["f"], ns["X"], ns["Y"], ns["x"]
    y = f(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    close(g.inverse(g(x)), x, "g is invertible")
    close(y, g.inverse(f.A(g(x))), "f = g^-1 A g")
    close(X.add(X.scale(2.0, x), x), X.scale(3.0, x), "2 ⊙ x ⊕ x = 3 ⊙ x in X")
    close(f(X.add(X.scale(2.0, x), x)), Y.scale(3.0, y), "f is linear: f(2 ⊙ x ⊕ x) = 3 ⊙ f(x)")
    close(f(ns["f_plus"](y)), y, "f f^+ f = f (Moore-Penrose)")
    close(ns["h"](x), f(ns["k"](x)), "h = f @ k is f ∘ k")
    U, S, Vh = f.svd()
    assert S.shape == (1,) and S[0] > 0  # LowRank(rank=1): one singular value
    close(U @ torch.diag(S) @ Vh, f.A.matrix(), "svd of the operator")
    points = f.singular_points()
    close(f(points.right), Y.scale(points.values, points.left), "f(v_i) = s_i ⊙ u_i")
    close(f.project(y), y, "y = f(x) lies in range(f): its projection is itself")
    q = f.project(x)
    close(f.project(q), q, "a projection is in range(f)")
    p = ns["p"]
    close(p(p(x)), p(x), "p(p(x)) == p(x)")
    assert not torch.allclose(p(x), x, atol=1e-2)  # a rank-1 projector of R^2 moves points


def test_readme_api_example_runs_and_does_what_it_says():
    """The tour in the README runs as shown, and its objects have the properties its comments
    state (linearity in the induced spaces, pseudo-inverse, composition, SVD, projection,
    idempotence). A fresh flow is the identity, where those hold for any linear map; so they
    are checked again on the same objects after ``far_from_identity`` moves ``g``, where a
    missing ``g`` or ``g^-1`` anywhere breaks them."""
    from lincore.testing import far_from_identity

    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    namespace: dict = {}
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        exec(compile(code, "README.md", "exec"), namespace)
        x, y = namespace["x"], namespace["y"]
        assert y.shape == x.shape == (8, 2) and torch.isfinite(y).all()
        close(namespace["z"], namespace["X"].scale(3.0, x), "the tour's z is 3 ⊙ x")
        close(namespace["r"], y, "the tour's r: y is its own projection")
        check_readme_claims(namespace)
        g = namespace["g"]
        far_from_identity(g)
        assert not torch.allclose(g(x), x, atol=1e-2)  # g now bends the space
        check_readme_claims(namespace)


def test_demo_fits_and_reports_exact_algebra(capsys):
    from lincore.demo import main, property_errors

    main(["--steps", "60"])
    out = capsys.readouterr().out
    assert "relative mse" in out and "Penrose" in out
    from lincore.demo import fit

    _, student, losses = fit(60, 0)
    assert losses[-1] < 0.5 * losses[0]
    for name, err, raw in property_errors(student):
        assert err < 1e-9, name
        assert not raw < 1e-3, f"{name}: raw coordinates should not satisfy it"


def test_flows_benchmark_quick_prints_a_table(capsys):
    from benchmarks.flows import main

    torch.manual_seed(0)
    rows = main(["--quick"])
    assert len(rows) == 2
    for r in rows:
        assert r["err f64"] < 1e-10 and r["err f32"] < 1e-4
    assert "| flow" in capsys.readouterr().out


@pytest.mark.slow
def test_one_step_benchmark_runs_and_its_collapse_is_exact(capsys):
    from benchmarks.one_step import main

    threads = torch.get_num_threads()
    try:
        out = main(["--seconds", "0.5", "--datasets", "moons", "--collapse-dims", "32"])
    finally:
        torch.set_num_threads(threads)  # the benchmark takes 2; the test worker beside us keeps 1
    one_step = [r for r in out["quality"] if r["sampler"].startswith("1 step (")]
    assert len(one_step) == 6  # Euler and RK4 B: the default, the rank-only operator, splines
    assert all(r["psnr_vs_multi"] >= 100 for r in one_step)  # exact algebra, not a speed target
    models = {r["model"] for r in out["quality"]}
    assert {"MeanFlow (MLP u)", "plain flow (same g, max. likelihood)"} <= models
    assert {"linearizer (spline g)", "plain flow (spline g, max. likelihood)"} <= models
    default = next(r for r in one_step if "isotropic_psd" in r["model"])
    assert {"nll_bpd", "inv_energy", "inv_shell", "mid_mmd"} <= set(default)
    assert {r["form"] for r in out["collapse"]} == {"shared basis", "factored", "dense"}
    assert "## Collapse" in capsys.readouterr().out


def test_params_yaml_restates_the_schemas_defaults():
    """One source for every default: a key left out of params.yaml and the same key written
    there give the same run, so the two never drift apart (sweep.workers_per_trial once did)."""
    import yaml

    from pipelines.config import Config, parse

    written = parse(yaml.safe_load((ROOT / "params.yaml").read_text())).to_flat_dict()
    default = Config().to_flat_dict()
    assert written.keys() == default.keys()  # every section is written out
    differences = {k: (v, default[k]) for k, v in written.items() if v != default[k]}
    assert not differences, "params.yaml value vs schema default: " + repr(differences)
