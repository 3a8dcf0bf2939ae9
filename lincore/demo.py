"""A two-minute tour of lincore: fit a Linearizer, then check its linear algebra.

    python -m lincore.demo [--steps N]

1. Teacher–student: a random Linearizer ``f* = h^-1 A* h`` on R^2 (far from linear) makes the
   targets; a fresh Linearizer learns it by plain regression.
2. On the trained student, in float64, the properties of a linear map are measured: linearity in the
   induced spaces, the four Moore–Penrose conditions, composition and projector idempotency.
   Each line prints the error next to what ordinary (pixel-space) algebra would give.
"""

from __future__ import annotations

import argparse
import time

import torch

from lincore import CouplingFlow, Dense, Idempotent, Linearizer
from lincore.testing import far_from_identity


def fit(steps: int, seed: int) -> tuple[Linearizer, Linearizer, list[float]]:
    """Train a student Linearizer on a random teacher; returns both and the loss curve."""
    torch.manual_seed(seed)
    teacher = Linearizer(
        far_from_identity(CouplingFlow(2, 4, 32, seed=99), strength=1.0), Dense(2, 2)
    )
    teacher.requires_grad_(False)
    student = Linearizer(CouplingFlow(2, 6, 64, seed=seed), Dense(2, 2))
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    losses = []
    for step in range(steps):
        x = torch.randn(512, 2)
        y = teacher(x)
        loss = (student(x) - y).square().mean() / y.var()  # relative MSE
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            print(f"  step {step:4d}  relative mse {losses[-1]:.4f}", flush=True)
    return teacher, student, losses


@torch.no_grad()
def property_errors(f: Linearizer) -> list[tuple[str, float, float]]:
    """(property, error in the induced spaces, error of the same identity in raw coordinates)."""
    f = f.double()
    X, Y = f.domain, f.codomain
    x, x2, y = (torch.randn(256, 2, dtype=torch.float64) for _ in range(3))
    fp = f.pinv()
    p = Linearizer(f.g_x, Idempotent(2, rank=1)).double()
    rows = [
        (
            "linearity f(2⊙x ⊕ x') = 2⊙f(x) ⊕ f(x')",
            f(X.combine(2.0, x, 1.0, x2)),
            Y.combine(2.0, f(x), 1.0, f(x2)),
            f(2 * x + x2),
            2 * f(x) + f(x2),
        ),
        ("Penrose f f+ f = f", f(fp(f(x))), f(x), None, None),
        ("Penrose f+ f f+ = f+", fp(f(fp(y))), fp(y), None, None),
        ("composition (f @ f)(x) = f(f(x))", (f @ f)(x), f(f(x)), None, None),
        ("idempotent p(p(x)) = p(x)", p(p(x)), p(x), None, None),
    ]
    out = []
    for name, a, b, raw_a, raw_b in rows:
        raw = float((raw_a - raw_b).abs().max()) if raw_a is not None else float("nan")
        out.append((name, float((a - b).abs().max()), raw))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="lincore demo: fit a Linearizer, check its algebra"
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    print(f"1. fitting a Linearizer to a non-linear teacher ({args.steps} Adam steps)")
    _, student, losses = fit(args.steps, args.seed)
    print(f"   relative mse {losses[0]:.3f} -> {losses[-1]:.4f}\n")
    print(
        "2. exact linear algebra of the trained Linearizer (float64, max abs error over 256 points)"
    )
    print(f"   | {'property':42} | induced spaces | raw coordinates |")
    print(f"   |{'-' * 44}|{'-' * 16}|{'-' * 17}|")
    for name, err, raw in property_errors(student):
        raw_s = f"{raw:15.1e}" if raw == raw else f"{'':15}"
        print(f"   | {name:42} | {err:14.1e} | {raw_s} |")
    print(f"\ndone in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
