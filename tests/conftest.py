"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.common import data as data_mod
from pipelines.common.config import parse


@pytest.fixture(scope="session")
def moons(tmp_path_factory) -> Path:
    """A prepared folder (train/val/test Parquet) of 600 two-moons points."""
    folder = tmp_path_factory.mktemp("moons")
    cfg = parse({"data": {"name": "moons", "n_samples": 600}})
    for name, part in data_mod.split(data_mod.build(cfg.data), cfg.data).items():
        data_mod.write_split(folder / f"{name}.parquet", part, seed=0)
    return folder
