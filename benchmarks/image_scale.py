"""Images at the paper's scale: memory and speed of training, evaluation and data streaming.

    python -m benchmarks.image_scale [--quick] [--skip-streaming] [--skip-evaluation]

Table 1, one training step (forward, backward, Adam; the second of two, so Adam's state is
held) of the image flow (``model.flow: image``, depth 6, hidden 128), rank r = 8, at 1x28x28
(MNIST) and 3x64x64 (CelebA), batch 16 and 256: peak RSS above the process's start and samples
per second, each case in a fresh process. Next to the project's operator (``isotropic_psd``:
``A_t = a(t) I + U S_t U^T`` applied factored) it runs the reference code's way of applying
``A_t``: the rank-r factors materialised as a dense ``B x D x D`` matrix and applied with
``bmm`` (9.7 GB for the matrix alone at 3x64x64, batch 16). A case whose estimated need (the
dense matrix and its gradient; or the batch-16 peak scaled by the batch) exceeds 80% of the
memory available is not run, and the table says so.

Table 2, evaluation (``pipelines.evaluation.trained.evaluate``) of a 1x28x28 model at 1k and 10k
test rows with the same ``evaluate.n_samples``: peak RSS (flat is the aim).

Table 3, a Ray Train worker's peak RSS while it trains one epoch on digits-shaped data
replicated 10x and 100x, with ``train.loader`` memory and ray_data (``benchmarks.
streaming_memory``; flat is the aim for ray_data).

Figures are for the machine it runs on (2 CPU cores here; ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import fresh_process, table
from lincore.generators import OneStepFlowMatching
from lincore.operators.time_low_rank import TimeLowRank

SHAPES = {"1x28x28": (1, 28, 28), "3x64x64": (3, 64, 64)}
RANK = 8
MEMORY_SHARE = 0.8  # of the available memory a case may be expected to need


class DenseTimeLowRank(TimeLowRank):
    """The reference code's application of a rank-r ``A_t``: ``U_t V_t^T`` materialised as a
    ``(B, D, D)`` matrix and applied with ``bmm`` (same parameters and values as
    ``TimeLowRank``; only the memory differs)."""

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        u, v = self.factors_at(t)
        dense = torch.bmm(u, v.transpose(1, 2))  # (B, D, D)
        return torch.bmm(dense, z.unsqueeze(-1)).squeeze(-1)


def _train_step_case(form: str, shape: tuple[int, ...], batch: int, queue: mp.Queue) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    kind = "isotropic_psd" if form == "factored (ours)" else "low_rank"
    model = OneStepFlowMatching.build(
        shape, rank=RANK, depth=6, hidden=128, operator_hidden=128, operator=kind, flow="image"
    )
    if form == "dense B x D x D (reference)":
        dense = DenseTimeLowRank(model.operator.dim, RANK, hidden=128)
        dense.load_state_dict(model.operator.state_dict())
        model.operator = dense
    queue.put(measure_train_step(model, shape, batch))


def measure_train_step(model: OneStepFlowMatching, shape: tuple[int, ...], batch: int) -> dict:
    """Two training steps (forward, backward, Adam) on a random batch: the second's time, so
    Adam's state is held, and the peak RSS above the start (``ru_maxrss``: call it in a fresh
    process, ``benchmarks.common.fresh_process``)."""
    x = torch.rand(batch, *shape)
    model.initialize_from(x[:16])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        loss = model(x)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds = time.perf_counter() - t0  # the second step's
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"peak_MB": peak / 1024, "samples_per_s": batch / seconds, "step_s": seconds}


def available_MB() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**20


def train_step_table(shapes: list[str], batches: list[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    forms = ("factored (ours)", "dense B x D x D (reference)")
    for name in shapes:
        shape = SHAPES[name]
        dim = int(torch.tensor(shape).prod())
        for form in forms:
            base: float | None = None
            for batch in sorted(batches):
                row: dict[str, Any] = {"shape": name, "A_t applied": form, "batch": batch}
                if form.startswith("dense"):
                    need = 2 * batch * dim * dim * 4 / 2**20  # the matrix and its gradient
                else:
                    need = (base or 0.0) * batch / 16
                if need > MEMORY_SHARE * available_MB():
                    row |= {
                        "peak_MB": f"not run: needs > {need / 1024:.0f} GB",
                        "samples_per_s": "",
                    }
                else:
                    row |= fresh_process(_train_step_case, form, shape, batch)
                    if batch == 16 and not form.startswith("dense"):
                        base = row["peak_MB"]
                print(row, flush=True)
                rows.append(row)
    return rows


def _evaluation_case(test_rows: int, n_samples: int, queue: mp.Queue) -> None:
    """``evaluate()`` of a small 1x28x28 image model (far from its initialisation) on a test
    split of ``test_rows`` rows written for the purpose, with a fixed ``n_samples``."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from lincore.testing import far_from_identity, far_from_zero
    from pipelines import data
    from pipelines.evaluation.trained import evaluate

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="lzr-eval-") as tmp:
        for name, n in (("train", 2000), ("test", test_rows)):
            levels = rng.integers(0, 256, (n, 1, 28, 28))
            x = ((levels + rng.random(levels.shape)) / 256).astype(np.float32)
            part = data.Dataset(x, rng.integers(0, 10, n), "benchmark", bins=256)
            data.write_split(Path(tmp) / f"{name}.parquet", part, seed=0)
            del levels, x, part
        train, labels, _ = data.read_split(Path(tmp) / "train.parquet")
        model = OneStepFlowMatching.build(
            (1, 28, 28), rank=4, depth=2, hidden=16, operator_hidden=16, flow="image", steps=20
        )
        model.initialize_from(torch.from_numpy(train[:256].copy()))
        far_from_identity(model.g, seed=0)
        far_from_zero(model.operator, seed=0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        evaluate(model, Path(tmp) / "test.parquet", train, labels, 20, n_samples, device="cpu")
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    queue.put({"peak_MB": peak / 1024, "seconds": seconds})


def evaluation_table(test_rows: list[int], n_samples: int) -> list[dict[str, Any]]:
    rows = []
    for n in test_rows:
        row = {"test rows": n, "evaluate.n_samples": n_samples}
        rows.append(row | fresh_process(_evaluation_case, n, n_samples))
    return rows


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1x28x28 only, batch 16 and 64")
    p.add_argument("--skip-evaluation", action="store_true")
    p.add_argument("--skip-streaming", action="store_true")
    args = p.parse_args(argv)
    shapes = ["1x28x28"] if args.quick else list(SHAPES)
    batches = [16, 64] if args.quick else [16, 256]
    out = {"train_step": train_step_table(shapes, batches)}
    print("\n## One training step (peak RSS above start, samples/s)\n")
    print(table(out["train_step"]))
    if not args.skip_evaluation:
        sizes = [1000, 2000] if args.quick else [1000, 10000]
        out["evaluation"] = evaluation_table(sizes, n_samples=1000)
        print("\n## Evaluation of a 1x28x28 model (peak RSS)\n")
        print(table(out["evaluation"]))
    if not args.skip_streaming:
        from benchmarks import streaming_memory

        print("\n## A Ray Train worker's peak memory over one epoch\n")
        out["streaming"] = streaming_memory.main(["--scales", "1,10" if args.quick else "10,100"])
    return out


if __name__ == "__main__":
    main()
