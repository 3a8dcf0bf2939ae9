"""The prepared data set as an MLflow dataset input: what every run (the train stage's, a sweep's
parent, each trial's child) was trained on, shown in the UI's *Dataset* column and drawer.

The digest is the DVC md5 of the prepared folder, computed the way DVC computes a directory's
hash (the md5 of its sorted ``[{"md5", "relpath"}]`` listing, without the ``.dir`` suffix): the
value ``dvc.lock`` holds for ``data/prepared`` after ``dvc repro``, so that a run can be matched
to the DVC revision of its data, and the same digest whether DVC ran or not (a content hash of
the folder's files either way). The profile says whether ``dvc.lock`` agrees (``dvc_lock``:
``match``, ``stale`` or ``absent``) and holds the data's shape, source and the rows of each
split, read from the Parquet footers (no data is loaded). The folder may be a local path or a
URI ``pyarrow.fs`` reads (``s3://...``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput

SPLITS = ("train", "val", "test")
CONTEXT = "training"
DIGEST_CHARS = 36  # MLflow's limit on a dataset digest


def _location(folder: str | Path) -> tuple[Any, str, str]:
    """``(pyarrow filesystem, path in it, display source)`` of a local folder or a URI."""
    import pyarrow.fs as pafs

    text = str(folder)
    if "://" not in text:
        text = str(Path(text).expanduser().resolve())
    fs, path = pafs.FileSystem.from_uri(text)
    return fs, path.rstrip("/"), text


def _files(fs: Any, base: str) -> list[Any]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def _md5(fs: Any, path: str) -> str:
    digest = hashlib.md5()
    with fs.open_input_stream(path) as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def dvc_dir_md5(folder: str | Path) -> str:
    """The md5 DVC gives a folder: ``dvc.lock``'s ``md5`` of it without ``.dir``."""
    fs, base, _ = _location(folder)
    entries = [
        {"md5": _md5(fs, i.path), "relpath": i.path[len(base) + 1 :]} for i in _files(fs, base)
    ]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def dvc_lock_md5(folder: str | Path, root: Path | None = None) -> str | None:
    """The md5 (without ``.dir``) that ``dvc.lock`` in ``root`` (default: the project) records
    for ``folder`` as a stage output; ``None`` without a lock or an entry for the folder."""
    import yaml

    from pipelines.config import project_root

    root = root or project_root()
    lock = root / "dvc.lock"
    if "://" in str(folder) or not lock.is_file():
        return None
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}
    except yaml.YAMLError:
        return None
    target = Path(folder).expanduser().resolve()
    for stage in stages.values():
        for out in (stage or {}).get("outs") or []:
            if out.get("md5") and (root / str(out.get("path", ""))).resolve() == target:
                return str(out["md5"]).removesuffix(".dir")
    return None


@functools.lru_cache(maxsize=8)
def _describe(folder: str, stamp: tuple) -> tuple[str, dict[str, Any]]:
    """``(digest, profile without dvc_lock)`` of a prepared folder; cached on its files' sizes
    and mtimes (a sweep logs the same data to its parent and every child run)."""
    import pyarrow.parquet as pq

    fs, base, _ = _location(folder)
    digest = dvc_dir_md5(folder)
    splits, shape, source = {}, None, None
    names = {i.path[len(base) + 1 :] for i in _files(fs, base)}
    for split in SPLITS:
        if f"{split}.parquet" not in names:
            continue
        with fs.open_input_file(f"{base}/{split}.parquet") as f:
            meta = pq.read_metadata(f)
        splits[split] = meta.num_rows
        kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
        shape = shape or (json.loads(kv["shape"]) if "shape" in kv else None)
        source = source or kv.get("source")
    profile = {
        "shape": shape,
        "splits": splits,
        "rows": sum(splits.values()),
        "source": source,
    }
    return digest[:DIGEST_CHARS], profile


def describe(folder: str | Path) -> tuple[str, dict[str, Any]]:
    """``(digest, profile)`` of a prepared folder (see the module's docstring)."""
    fs, base, text = _location(folder)
    stamp = tuple((i.path, i.size, i.mtime_ns) for i in _files(fs, base))
    digest, profile = _describe(text, stamp)
    locked = dvc_lock_md5(folder)
    status = "absent" if locked is None else ("match" if locked == digest else "stale")
    return digest, {**profile, "dvc_lock": status}


def dataset_entity(folder: str | Path, *, name: str | None = None) -> Dataset:
    """The ``mlflow.entities.Dataset`` of a prepared folder (``{train,val,test}.parquet``):
    ``name`` (default: the data's source), the folder as its source, the digest and profile of
    ``describe``, and its schema (``x``: float array, ``label``: long)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    digest, profile = describe(folder)
    text = _location(folder)[2]
    with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        source = resolve_dataset_source(text)
    schema = Schema([ColSpec(Array(DataType.float), "x"), ColSpec(DataType.long, "label")])
    label = name or str(profile["source"] or Path(text).name).rsplit(".", 1)[-1]
    e = MetaDataset(source, name=label, digest=digest, schema=schema)._to_mlflow_entity()
    return Dataset(
        e.name, e.digest, e.source_type, e.source, schema=e.schema, profile=json.dumps(profile)
    )


def dataset_input(
    folder: str | Path, *, name: str | None = None, context: str = CONTEXT
) -> DatasetInput:
    """``dataset_entity`` with its context tag (``mlflow.data.context``), ready for
    ``MlflowClient.log_inputs``."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    return DatasetInput(
        dataset_entity(folder, name=name), [InputTag(MLFLOW_DATASET_CONTEXT, context)]
    )


def log_dataset(
    client: MlflowClient,
    run_id: str,
    folder: str | Path,
    *,
    name: str | None = None,
    context: str = CONTEXT,
) -> DatasetInput:
    """Log the prepared folder as the run's dataset input; returns what was logged."""
    item = dataset_input(folder, name=name, context=context)
    client.log_inputs(run_id, [item])
    return item
