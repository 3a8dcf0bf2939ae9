"""Where things are: the project root, paths from params made absolute, outputs checked.

A location may also be a URI (``s3://bucket/x``, ``gs://...``, ``file:///...``): ``resolve``
passes it through untouched, as a ``StorageUri`` (inputs: the ``--data`` of the stages and the
sweep, ``data.path``), and ``output_path`` accepts one where the caller says so (``uri=True``:
``train.storage_path``, prepare's ``--out``). Its bucket is probed on first use
(``pipelines.storage``)."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.errors import ConfigError
from pipelines.storage import StorageUri, check_location, is_uri

ROOT = Path(__file__).resolve().parents[2]
"""This checkout (``pipelines/config/paths.py`` is two folders below it)."""

PARAMS_FILE = ROOT / "params.yaml"
"""Every stage's ``--params`` default."""

# Where the stages write and read by default, relative to the project root: the stages' argparse
# defaults, and what dvc.yaml's outs, metrics and plots name (tests/test_dvc_deps.py checks that
# they agree). Change one here and in dvc.yaml together.
PREPARED = "data/prepared"
"""prepare's ``--out``; the ``--data`` of train, evaluate and the sweep"""
MODELS = "models"
"""train's ``--out`` (``model.pt``, ``summary.json``); evaluate's ``--model``"""
PLOTS = "plots"
"""the ``--plots`` of train (``loss.*``) and evaluate (``steps.*``, samples, interpolation)"""
METRICS = "metrics.json"
"""evaluate's ``--metrics``"""
SWEEP_RESULTS = "results/sweep"
"""the sweep's ``--out`` (best_params.yaml, trials.*, pareto.*)"""
RAW_DATA = "data/raw"
"""``data.path``'s default: a folder for the user's own data set (read when ``data.name`` is
``path``); prepare depends on ``data.path`` in dvc.yaml, which needs an existing path"""


def project_root() -> Path:
    """Where relative paths in params point: ``LINEARIZER_ROOT`` if set, else this checkout.

    ``ray job submit`` runs the code in a temporary copy; setting the root (``--root``) keeps
    data, checkpoints and MLflow in the user's project instead of that copy.
    """
    return Path(os.path.expanduser(os.environ.get("LINEARIZER_ROOT") or ROOT)).resolve()


def resolve(path: str | os.PathLike[str], *, base: Path | None = None) -> Path | StorageUri:
    """An output/input path from params, absolute (``ray job submit`` runs in a copy); a URI
    comes back untouched (a ``StorageUri``)."""
    if is_uri(path):
        return StorageUri(os.fspath(path))
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else ((base or project_root()) / p).resolve()


SOURCE_FOLDERS = ("lincore", "pipelines", "sweeps", "tests", "benchmarks", ".git", ".dvc")


def output_path(path: str | os.PathLike[str], key: str, *, uri: bool = False) -> Path | StorageUri:
    """Where an output goes, checked: a relative path must stay inside the project (no ``..``
    escape) and no output may land in a source folder. An absolute path is the user's explicit
    choice (shared storage on a cluster) and is kept. A URI is accepted where ``uri`` says the
    output may live in shared storage (checked there: bucket reachable, credentials set), and
    refused elsewhere."""
    if is_uri(path):
        if not uri:
            raise ConfigError(
                f"{key}={str(path)!r}: a URI is not accepted here; give a local path (URIs are "
                "taken by the train stage's train.storage_path, --data, prepare's --out and "
                "data.path)"
            )
        check_location(os.fspath(path))
        return StorageUri(os.fspath(path))
    root = project_root()
    raw = Path(os.path.expanduser(path))
    p = resolve(raw)
    if not raw.is_absolute() and not p.is_relative_to(root):
        raise ConfigError(
            f"{key}={str(path)!r} resolves to {p}, outside the project folder {root}; give a "
            "path inside it (or an absolute path, on purpose)"
        )
    for folder in SOURCE_FOLDERS:
        if p == root or p.is_relative_to(root / folder) or p.is_relative_to(ROOT / folder):
            raise ConfigError(
                f"{key}={str(path)!r} points into the project's source ({p}); outputs go in "
                "their own folders (data/, models/, results/, ray_results/ ...)"
            )
    return p
