"""The SVD of a collapsed sampler through its factors against ``torch.linalg.svd`` of the dense
``B``: time, peak memory and agreement, by latent dimension ``D``.

    python -m benchmarks.directions [--dims 64 1024 4096 12288] [--rank 16] [--steps 100]

The operator is the default one (``isotropic_psd``, rank ``r``, pushed far from zero), collapsed
at ``T`` Euler steps in float64; the factored SVD costs ``O(D r^2)``, the dense one ``O(D^3)``
(run up to ``--max-dense``). Each case runs in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from benchmarks.common import fresh_process, table


def _case(dim: int, rank: int, steps: int, dense: bool, queue: object) -> None:
    from lincore.operators import time_operator
    from lincore.sampling import collapse
    from lincore.spectrum import sampler_svd
    from lincore.testing import far_from_zero

    torch.manual_seed(0)
    op = far_from_zero(time_operator("isotropic_psd", dim, rank, hidden=64), seed=1).double()
    b = collapse(op.requires_grad_(False), steps, "euler")
    t0 = time.perf_counter()
    svd = sampler_svd(b)
    row = {
        "D": dim,
        "r": rank,
        "directions": svd.k,
        "factored_svd_s": time.perf_counter() - t0,
        "effective_rank": svd.effective_rank(),
    }
    if dense:
        t0 = time.perf_counter()
        s = torch.linalg.svdvals(b.dense())
        row["dense_svd_s"] = time.perf_counter() - t0
        row["max_abs_diff"] = float((s - svd.values()).abs().max())
        row["speedup"] = row["dense_svd_s"] / row["factored_svd_s"]
    row["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(row)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[64, 1024, 4096, 12288])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--max-dense", type=int, default=4096, help="largest D with a dense SVD")
    args = p.parse_args(argv)
    rows = [fresh_process(_case, d, args.rank, args.steps, d <= args.max_dense) for d in args.dims]
    print(f"## SVD of the collapsed sampler B (isotropic_psd, r={args.rank}, T={args.steps})\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
