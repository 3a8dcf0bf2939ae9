"""The README's two image recipes, end to end in a temporary copy of the project, on small files
the test writes: MNIST as IDX files with their labels (`dvc repro evaluate`: prepare, train with
`model.flow: image`, evaluate) and a CelebA-style folder of 178x218 RGB pictures (prepare and one
epoch). The recipes' `params.yaml` overrides are read from the README itself, so the documented
keys are the tested ones; only the model and the budget are shrunk."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_pipeline_e2e import BIN, ROOT, copy_project, sh

TINY_MODEL = {"rank": 4, "depth": 2, "hidden": 16, "operator_hidden": 16}
TINY_TRAIN = {"epochs": 1, "batch_size": 32, "num_workers": 1, "image_every": 0}
TINY_EVALUATE = {"steps": 10, "grid": 16, "n_samples": 64}


def readme_recipe(name: str) -> dict:
    """The YAML block that follows ``<!-- recipe: name -->`` in the README."""
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- recipe: {name} -->\s*```yaml\n(.*?)```", text, re.S)
    assert m, f"README has no recipe {name!r}"
    return yaml.safe_load(m.group(1))


def params_for(recipe: dict, **shrunk: dict) -> str:
    """``params.yaml``: the project's, with the recipe's sections merged in, then ``shrunk``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in [*recipe.items(), *shrunk.items()]:
        params[section] = {**params[section], **values}
    return yaml.safe_dump(params)


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's file pair, ``<prefix>-images-idx3-ubyte.gz``, ``<prefix>-labels-idx1-ubyte.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


def digit_like(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """28x28 grey images of 3 classes (a bar, a block, a ring) on a dark, noisy background."""
    labels = rng.integers(0, 3, n)
    yy, xx = np.mgrid[:28, :28]
    r = np.hypot(yy - 14, xx - 14)
    shapes = [
        (abs(xx - 14) < 3) & (abs(yy - 14) < 10),
        (abs(xx - 14) < 7) & (abs(yy - 14) < 7),
        (r > 6) & (r < 10),
    ]
    images = rng.integers(0, 40, (n, 28, 28))
    for i, k in enumerate(labels):
        images[i][shapes[k]] = rng.integers(180, 256, int(shapes[k].sum()))
    return images.astype(np.uint8), labels


@pytest.mark.slow
def test_mnist_idx_recipe_trains_and_evaluates_the_image_flow(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    copy_project(proj)
    recipe = readme_recipe("mnist")
    assert recipe["model"]["flow"] == "image" and recipe["data"]["name"] == "path"
    rng = np.random.default_rng(0)
    raw = proj / recipe["data"]["path"]
    for prefix, n in (("train", 240), ("t10k", 60)):
        write_idx(raw, prefix, *digit_like(n, rng))
    (proj / "params.yaml").write_text(
        params_for(
            recipe, model=TINY_MODEL, train={**TINY_TRAIN, "num_workers": 0}, evaluate=TINY_EVALUATE
        )
    )
    sh([str(BIN / "dvc"), "repro", "evaluate"], proj, timeout=600)

    footer = pq.read_metadata(proj / "data/prepared/train.parquet").metadata
    assert json.loads(footer[b"shape"]) == [1, 28, 28] and footer[b"bins"] == b"256"
    schema = pq.read_schema(proj / "data/prepared/train.parquet")
    assert schema.field("x").type.value_type == pa.uint8(), "8-bit data is stored as its levels"
    labels = pq.read_table(proj / "data/prepared/train.parquet").column("label").to_numpy()
    assert set(np.unique(labels)) == {0, 1, 2}, "the labels file beside the images was read"
    rows = sum(
        pq.read_metadata(proj / f"data/prepared/{s}.parquet").num_rows
        for s in ("train", "val", "test")
    )
    assert rows == 300, "train and t10k files both read"

    metrics = json.loads((proj / "metrics.json").read_text())
    assert metrics["nll_bins"] == 256
    # per bin of dequantised 8-bit data: never below 0 (a continuous density on the raw levels
    # could go to -inf); a one-epoch toy model is near the uniform density's 8 bits/dim
    assert 0 < metrics["nll_bits_per_dim"] < 16
    assert isinstance(metrics["frechet_classifier"], float) and metrics["frechet_classifier"] > 0
    assert metrics["psnr_one_vs_multi_euler"] > 100
    assert (proj / "plots/samples.png").stat().st_size > 1000


@pytest.mark.slow
def test_celeba_style_folder_recipe_prepares_centre_crops_and_trains(tmp_path):
    from PIL import Image

    proj = tmp_path / "proj"
    proj.mkdir()
    copy_project(proj)
    recipe = readme_recipe("celeba")
    raw = proj / recipe["data"]["path"]
    raw.mkdir(parents=True)
    size = recipe["data"]["image_size"]
    for i in range(24):  # 178 x 218 like CelebA's aligned crops: a red centre, blue margins
        a = np.zeros((218, 178, 3), np.uint8)
        a[..., 2] = 200
        a[20:198, :, :] = (200, 30 + i, 30)
        Image.fromarray(a).save(raw / f"{i:06d}.jpg", quality=95)
    tiny_train = {**TINY_TRAIN, "batch_size": 8}
    (proj / "params.yaml").write_text(params_for(recipe, model=TINY_MODEL, train=tiny_train))
    sh([str(BIN / "dvc"), "repro", "train"], proj, timeout=600)

    footer = pq.read_metadata(proj / "data/prepared/train.parquet").metadata
    assert json.loads(footer[b"shape"]) == [3, size, size] and footer[b"bins"] == b"256"
    x = pq.read_table(proj / "data/prepared/train.parquet").column("x").to_pylist()
    first = np.asarray(x[0]).reshape(3, size, size) / 256  # uint8 levels
    assert first[0].mean() > 0.6 and first[2].mean() < 0.3, "the centre square, not the margins"
    summary = json.loads((proj / "models/summary.json").read_text())
    assert summary["epochs"] == 1 and np.isfinite(summary["train_loss"])
