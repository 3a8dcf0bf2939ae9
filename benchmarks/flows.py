"""Throughput and round-trip error of the vector and image flows.

    python -m benchmarks.flows [--quick] [--threads N]

For each size: forward and inverse samples/s, the ratios inverse/forward and round trip
(forward then inverse, the floor of a one-step sampler) / forward, all timed in the same run, and
the round-trip error max|g^-1(g(x)) - x| in float32 and float64 on a network pushed as far from
the identity as a trained one (lincore.testing.far_from_identity).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lincore import CouplingFlow, Flow, ImageFlow
from lincore.metrics import median_seconds
from lincore.testing import far_from_identity


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Flow]
    batch: int


CASES = [
    Case("vector D=2, depth 6, hidden 64", lambda: CouplingFlow(2, 6, 64), 4096),
    Case("vector D=64, depth 8, hidden 128", lambda: CouplingFlow(64, 8, 128), 1024),
    Case("vector D=1024, depth 8, hidden 256", lambda: CouplingFlow(1024, 8, 256), 256),
    Case("image 1x8x8, depth 4, hidden 32", lambda: ImageFlow(1, 8, 8, depth=4, hidden=32), 256),
    Case("image 1x32x32, depth 4, hidden 32", lambda: ImageFlow(1, 32, 32, depth=4, hidden=32), 64),
    Case("image 3x64x64, depth 4, hidden 32", lambda: ImageFlow(3, 64, 64, depth=4, hidden=32), 16),
    Case("image 1x8x8, depth 32, hidden 32", lambda: ImageFlow(1, 8, 8, depth=32, hidden=32), 256),
]


@torch.no_grad()
def measure(case: Case, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    g = case.build()
    x = torch.randn(case.batch, *g.event_shape)
    g.initialize_from(x)
    g = far_from_identity(g).eval()
    t_fwd = median_seconds(lambda: g(x), repeats)
    z = g(x)
    t_inv = median_seconds(lambda: g.inverse(z), repeats)
    t_both = median_seconds(lambda: g.inverse(g(x)), repeats)
    err32 = float((g.inverse(g(x)) - x).abs().max())
    g64, x64 = g.double(), x.double()
    err64 = float((g64.inverse(g64(x64)) - x64).abs().max())
    return {
        "fwd/s": case.batch / t_fwd,
        "inv/s": case.batch / t_inv,
        "inv/fwd": t_inv / t_fwd,
        "round trip/fwd": t_both / t_fwd,
        "err f32": err32,
        "err f64": err64,
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats (CI smoke)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = CASES[:1] + CASES[3:4] if args.quick else CASES
    repeats = 3 if args.quick else 10
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 timings\n")
    columns = "fwd samples/s | inv samples/s | inv/fwd | round trip/fwd | err f32 | err f64"
    header = f"| {'flow':36} | {columns} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    rows = []
    for case in cases:
        r = measure(case, repeats)
        rows.append(r)
        print(
            f"| {case.name:36} | {r['fwd/s']:13,.0f} | {r['inv/s']:13,.0f} | {r['inv/fwd']:7.2f} "
            f"| {r['round trip/fwd']:14.2f} | {r['err f32']:7.1e} | {r['err f64']:7.1e} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
