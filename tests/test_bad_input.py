"""The bad-input battery: every case across params.yaml, the CLIs, data files and the public API
gives exit status 2 with one line naming the problem and the fix (or a typed exception saying
so), never a traceback from inside Ray or pyarrow, and leaves no output behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lincore import CouplingFlow, Dense, Idempotent, Linearizer, filters
from lincore.generators import ProjectiveGenerator, StyleTransfer
from pipelines.commands import cli as sample_cli
from pipelines.commands import projective, style
from pipelines.common.errors import cli
from pipelines.stages import evaluate, prepare, train
from sweeps import cli as tune

TINY = {"data": {"name": "moons", "n_samples": 200}, "model": {"rank": 2, "depth": 1}}


def params(tmp: Path, **sections: dict) -> str:
    merged = {**TINY}
    for name, values in sections.items():
        merged[name] = {**merged.get(name, {}), **values}
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(merged))
    return str(path)


def corrupt(prepared: Path, tmp: Path, kind: str) -> str:
    """A copy of the prepared folder with ``train.parquet`` broken in one way."""
    folder = tmp / f"data-{kind}"
    folder.mkdir()
    for f in prepared.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    bad = folder / "train.parquet"
    if kind == "garbage":
        bad.write_bytes(b"PAR1 this is not parquet")
    elif kind == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    elif kind == "empty":
        table = pq.read_table(bad)
        pq.write_table(table.slice(0, 0), bad)
    elif kind == "no-x":
        pq.write_table(pa.table({"y": [1.0, 2.0]}), bad)
    elif kind == "nan":
        table = pq.read_table(bad)
        x = table.column("x").to_pylist()
        x[0] = [float("nan"), 0.0]
        pq.write_table(table.set_column(0, "x", pa.array(x, table.schema.field("x").type)), bad)
    elif kind == "shape":
        table = pq.read_table(bad)
        meta = {**table.schema.metadata, b"shape": b"[3]"}
        pq.write_table(table.replace_schema_metadata(meta), bad)
    return str(folder)


def npz(tmp: Path, name: str, **arrays: np.ndarray) -> str:
    path = tmp / name
    np.savez(path, **arrays)
    return str(path)


# (id, builder(tmp, prepared) -> (stage main, argv), expected words in the one-line error)
CLI_CASES: list[tuple[str, Callable, str]] = [
    ("unknown section", lambda t, d: (prepare.main, ["--params", params(t, trainer={"a": 1})]),
     "unknown section 'trainer'"),
    ("unknown key", lambda t, d: (prepare.main, ["--params", params(t, model={"rnk": 2})]),
     "unknown key 'model.rnk'"),
    ("wrong type", lambda t, d: (prepare.main, ["--params", params(t, model={"rank": "four"})]),
     "model.rank must be an integer"),
    ("depth below 1", lambda t, d: (prepare.main, ["--params", params(t, model={"depth": 0})]),
     "model.depth must be >= 1"),
    ("negative lr", lambda t, d: (prepare.main, ["--params", params(t, train={"lr": -1})]),
     "train.lr must be > 0"),
    ("unknown data set", lambda t, d: (prepare.main, ["--params", params(t, data={"name": "x"})]),
     "data.name 'x' is unknown; allowed"),
    ("bool for int", lambda t, d: (prepare.main, ["--params", params(t, train={"epochs": True})]),
     "train.epochs must be an integer"),
    ("empty sweep space", lambda t, d: (prepare.main, ["--params", params(t, sweep={"space": {}})]),
     "sweep.space must be a non-empty mapping"),
    ("unknown distribution", lambda t, d: (prepare.main, ["--params", params(
        t, sweep={"space": {"model.rank": {"normal": [1, 2]}}})]), "unknown distribution"),
    ("untunable key", lambda t, d: (prepare.main, ["--params", params(
        t, sweep={"space": {"train.storage_path": {"choice": ["x"]}}})]), "not a tunable key"),
    ("malformed yaml", lambda t, d: (prepare.main, ["--params", str(_write(t, "p.yaml",
                                                                           "model: [rank: 3\n"))]),
     "is not valid YAML"),
    ("missing params file", lambda t, d: (prepare.main, ["--params", str(t / "none.yaml")]),
     "params file not found"),
    ("missing data.path", lambda t, d: (prepare.main, ["--params", params(
        t, data={"name": "path", "path": str(t / "nowhere.npz")}), "--out", str(t / "o")]),
     "does not exist"),
    ("npz without arrays", lambda t, d: (prepare.main, ["--params", params(
        t, data={"name": "path", "path": npz(t, "e.npz")}), "--out", str(t / "o")]),
     "holds no arrays"),
    ("NaN in a data file", lambda t, d: (prepare.main, ["--params", params(
        t, data={"name": "path", "path": npz(t, "n.npz", x=np.full((20, 2), np.nan))}),
        "--out", str(t / "o")]), "contains NaN or inf"),
    ("unknown file format", lambda t, d: (prepare.main, ["--params", params(
        t, data={"name": "path", "path": str(_write(t, "d.txt", "1 2"))}), "--out",
        str(t / "o")]), "d.txt"),
    ("garbage parquet", lambda t, d: (train.main, ["--params", params(t), "--data",
                                                    corrupt(d, t, "garbage")]),
     "not a readable Parquet file"),
    ("truncated parquet", lambda t, d: (train.main, ["--params", params(t), "--data",
                                                      corrupt(d, t, "truncated")]),
     "not a readable Parquet file"),
    ("empty parquet", lambda t, d: (train.main, ["--params", params(t), "--data",
                                                  corrupt(d, t, "empty")]), "has no rows"),
    ("parquet without x", lambda t, d: (train.main, ["--params", params(t), "--data",
                                                      corrupt(d, t, "no-x")]),
     "lacks the 'x' column"),
    ("NaN in prepared data", lambda t, d: (train.main, ["--params", params(t), "--data",
                                                         corrupt(d, t, "nan")]),
     "contains NaN or inf"),
    ("rows vs shape", lambda t, d: (train.main, ["--params", params(t), "--data",
                                                  corrupt(d, t, "shape")]),
     "do not match the shape"),
    ("missing prepared data", lambda t, d: (train.main, ["--params", params(t), "--data",
                                                          str(t / "none")]),
     "run `dvc repro prepare` first"),
    ("impossible rank", lambda t, d: (train.main, ["--params", params(t, model={"rank": 3}),
                                                    "--data", str(d)]),
     "model.rank=3 is impossible"),
    ("unreachable MLflow", lambda t, d: (train.main, ["--params", params(
        t, mlflow={"tracking_uri": "http://127.0.0.1:9"}), "--data", str(d)]),
     "MLflow tracking server http://127.0.0.1:9 is unreachable"),
    ("sweep rank above D", lambda t, d: (tune.main, ["--params", params(
        t, sweep={"space": {"model.rank": {"choice": [1, 5]}}}), "--data", str(d)]),
     "above the latent dimension 2"),
    ("sweep flag out of range", lambda t, d: (tune.main, ["--params", params(t), "--data",
                                                          str(d), "--max-epochs", "0"]),
     "sweep.max_epochs must be >= 1"),
    ("resume unknown sweep", lambda t, d: (tune.main, ["--params", params(
        t, sweep={"space": {"model.rank": {"choice": [1, 2]}}}), "--data", str(d),
        "--resume", "nope"]),
     "no sweep to resume"),
    ("missing model file", lambda t, d: (evaluate.main, ["--params", params(t), "--data",
                                                         str(d), "--model", str(t / "m")]),
     "model.pt"),
    ("invalid MLflow model URI", lambda t, d: (sample_cli.main, ["sample", "--model",
                                                                 "models:/no-such-model/1"]),
     "no-such-model"),
    ("sample count", lambda t, d: (sample_cli.main, ["sample", "--model", "x.pt", "--n", "0"]),
     "--n must be >= 1"),
    ("output outside the project", lambda t, d: (prepare.main, ["--params", params(t), "--out",
                                                                "../../escape"]),
     "outside the project folder"),
    ("output into the source", lambda t, d: (prepare.main, ["--params", params(t), "--out",
                                                            "lincore/data"]),
     "points into the project's source"),
    ("projector rank", lambda t, d: (projective.main, ["--data", "moons", "--ranks", "2",
                                                       "--out", str(t / "o")]),
     "needs a rank in 1..1"),
    ("unknown style", lambda t, d: (style.main, ["--styles", "oil", "--out", str(t / "o")]),
     "unknown style 'oil'"),
    ("sepia on grey digits", lambda t, d: (style.main, ["--content", "digits", "--styles",
                                                        "sepia", "--out", str(t / "o")]),
     "sepia needs RGB"),
]  # fmt: skip


def _write(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text)
    return tmp / name


@pytest.mark.parametrize(("case", "build", "words"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_cli_input_exits_2_with_one_clear_line(case, build, words, tmp_path, moons,
                                                    capsys, monkeypatch):  # fmt: skip
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if case != "unreachable MLflow":  # never touch the project's own mlflow.db
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    main, argv = build(tmp_path, moons)
    with pytest.raises(SystemExit) as exit_:
        cli(main)(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert words in err, err
    last = err.strip().splitlines()[-1]  # (MLflow may log INFO lines before it)
    assert last.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing half


API_CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("projector rank = D", lambda: ProjectiveGenerator.build((4,), 4), ValueError,
     r"rank must be an integer in 1\.\.3"),
    ("idempotent rank = dim", lambda: Idempotent(3, rank=3), ValueError, "rank-3 projector is"),
    ("style index", lambda: StyleTransfer.build((3, 4, 4), 1, depth=1).transfer(
        torch.rand(1, 3, 4, 4), 1), IndexError, r"style must be in 0\.\.0"),
    ("image too small", lambda: StyleTransfer.build((3, 3, 3), 1), ValueError,
     "too small or odd for the 2x2 squeeze"),
    ("operator vs network dims", lambda: Linearizer(CouplingFlow(3, 1, 8), Dense(4, 4)),
     ValueError, "build A with dim_in=3"),
    ("wrong input shape", lambda: CouplingFlow(3, 1, 8)(torch.rand(2, 4)), ValueError, "x"),
    ("unknown filter", lambda: filters.apply("oil", torch.rand(1, 3, 4, 4)), ValueError,
     "unknown style filter 'oil'"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "call", "kind", "words"), API_CASES,
                         ids=[c[0] for c in API_CASES])  # fmt: skip
def test_bad_api_input_raises_a_typed_error_naming_the_argument(case, call, kind, words):
    with pytest.raises(kind, match=words):
        call()


def test_the_battery_is_large_enough():
    assert len(CLI_CASES) + len(API_CASES) >= 30
