"""Evaluation at scale: its cost and memory are fixed by ``evaluate.n_samples`` and
``evaluate.batch_size``, not by the test split's size.

Peak memory is not measured here (allocator statistics on the CPU are not reliable enough for a
test); instead: the test rows are read with ``iter_rows`` up to ``n_samples`` rows, never whole,
a split of 8,000 rows gives the very metrics of one of 1,000 rows with the same first rows, no
distance matrix is larger than a ``batch_size`` block (but the fixed-size bandwidth one), and
the results do not depend on the batch size."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lincore.generators import OneStepFlowMatching
from lincore.testing import far_from_identity, far_from_zero
from pipelines import data as data_mod
from pipelines.config import ModelConfig
from pipelines.evaluation import trained as stage

SHAPE = (1, 8, 8)
SMALL = ModelConfig(rank=2, depth=2, hidden=16, operator_hidden=16, flow="image")
TIMINGS = ("samples_per_s_one_step", "samples_per_s_multi_step", "speedup_one_vs_multi")
FIRST_BATCH_ONLY = (
    "psnr_one_vs_multi_euler",
    "psnr_one_vs_multi_rk4",
    "max_err_one_vs_multi_euler",
    "max_err_one_vs_multi_rk4",
    *TIMINGS,
)
"""Metrics of the first batch (the exactness checks) or of the clock."""


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 8x8 images in [0, 1] of 3 classes (a bar, a block, a frame) and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    yy, xx = np.mgrid[:8, :8]
    shapes = np.stack(
        [
            (abs(xx - 3.5) < 1) & (abs(yy - 3.5) < 3),
            (abs(xx - 3.5) < 2) & (abs(yy - 3.5) < 2),
            (abs(xx - 3.5) > 2.5) | (abs(yy - 3.5) > 2.5),
        ]
    ).astype(np.float32)
    x = 0.8 * shapes[labels] + 0.2 * rng.random((n, 8, 8), dtype=np.float32)
    return x[:, None], labels


def write(path: Path, x: np.ndarray, labels: np.ndarray) -> Path:
    part = SimpleNamespace(x=x, labels=labels, source="test", bins=0)
    data_mod.write_split(path, part, seed=0)
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Evaluation of these small tensors gains nothing from threads, and on shared, busy cores
    the intra-op threads wait on each other (the same call runs 2 s or 50 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict:
    """Test splits of 1,000 and 8,000 rows (the first 1,000 the same) and 300 training rows."""
    folder = tmp_path_factory.mktemp("scale")
    x, labels = images(8000, seed=1)
    train, train_labels = images(300, seed=2)
    return {
        "small": write(folder / "test_1k.parquet", x[:1000], labels[:1000]),
        "large": write(folder / "test_8k.parquet", x, labels),
        "train": train,
        "labels": train_labels,
    }


def image_model() -> OneStepFlowMatching:
    model = OneStepFlowMatching.build(SHAPE, SMALL, seed=0, steps=10)
    model.initialize_from(torch.from_numpy(images(64, seed=3)[0]))
    far_from_identity(model.g, seed=0)
    far_from_zero(model.operator, seed=0)
    return model


def run(splits: dict, split: str, n: int, batch_size: int) -> tuple[dict, list, dict]:
    return stage.evaluate(
        image_model(),
        splits[split],
        splits["train"],
        splits["labels"],
        10,
        n,
        device="cpu",
        batch_size=batch_size,
    )


def test_evaluation_reads_n_rows_and_is_flat_in_the_test_size(splits, monkeypatch):
    """The same ``n_samples`` on a split 8 times larger: the same rows read (``iter_rows``
    with that limit, in batches), the same metrics, and no distance matrix beyond a block."""
    reads: list[dict] = []
    iter_rows = stage.iter_rows

    def spy_rows(path, batch_rows, *, limit=None):
        read = {"limit": limit, "rows": 0, "largest": 0}
        reads.append(read)
        for x, labels in iter_rows(path, batch_rows, limit=limit):
            read["rows"] += len(x)
            read["largest"] = max(read["largest"], len(x))
            yield x, labels

    def no_whole_split(*_args, **_kwargs):
        raise AssertionError("evaluate read a whole split")

    cdists: list[tuple[int, int]] = []
    cdist = torch.cdist

    def spy_cdist(p, q, *args, **kwargs):
        cdists.append((p.shape[0], q.shape[0]))
        return cdist(p, q, *args, **kwargs)

    monkeypatch.setattr(stage, "iter_rows", spy_rows)
    monkeypatch.setattr(data_mod, "read_split", no_whole_split)
    monkeypatch.setattr(torch, "cdist", spy_cdist)
    results = {}
    for split in ("small", "large"):
        reads.clear()
        cdists.clear()
        results[split] = run(splits, split, 200, 64)
        assert reads == [{"limit": 200, "rows": 200, "largest": 64}], split
        # every distance block is at most 64 x 64, but the bandwidths' (the first
        # min(n, 1000) reference rows: fixed, whatever the split's size)
        assert cdists.count((200, 200)) == 1, split
        assert max(max(c) for c in cdists if c != (200, 200)) == 64, split
    (small, small_rows, small_images), (large, large_rows, large_images) = results.values()
    assert set(small) == set(large)
    for key, value in small.items():
        if key not in TIMINGS:
            assert large[key] == value or (math.isnan(value) and math.isnan(large[key])), key
    assert small_rows == large_rows
    assert np.array_equal(small_images["samples"], large_images["samples"])
    assert small_images["samples"].shape == (200, *SHAPE)


def test_results_do_not_depend_on_the_batch_size(splits):
    """Batches of 64 (uneven: 250 = 3 x 64 + 58) give the one-batch results: the running
    moments, error sums, energies and block sums are exact rewrites, not approximations."""
    one, one_rows, one_images = run(splits, "small", 250, 10_000)
    many, many_rows, many_images = run(splits, "small", 250, 64)
    assert {"frechet_classifier", "interpolation_frechet_classifier", "mmd"} <= set(one)
    for key, value in one.items():
        if key in FIRST_BATCH_ONLY:
            continue
        assert many[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    for a, b in zip(one_rows, many_rows, strict=True):
        assert a["steps"] == b["steps"] and math.isfinite(b["mmd_one_step"])
        assert b["psnr_one_vs_multi"] > 200  # the collapse is exact on the first batch too
    np.testing.assert_allclose(many_images["samples"], one_images["samples"], rtol=0, atol=1e-5)
    assert many["psnr_one_vs_multi_euler"] > 200 and many["max_err_one_vs_multi_rk4"] < 1e-9


def test_n_samples_zero_is_the_test_split_up_to_a_cap(splits, monkeypatch):
    rows, n = stage.reference_rows(splits["small"], 0, 128)
    assert n == 1000 and rows.shape == (1000, *SHAPE)
    monkeypatch.setattr(stage, "MAX_REFERENCE", 300)
    rows, n = stage.reference_rows(splits["large"], 0, 128)
    assert n == 300 and len(rows) == 300
    rows, n = stage.reference_rows(splits["small"], 1500, 128)  # more samples than test rows
    assert n == 1500 and len(rows) == 1000
    x = images(50, seed=1)[0]
    rows, n = stage.reference_rows(x, 0, 128)  # rows in memory (small data, tests)
    assert n == 50 and rows is not None and np.array_equal(rows, x)
