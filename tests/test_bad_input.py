"""The bad-input battery: every case across params.yaml, the CLIs, data files and the public API
gives exit status 2 with one line naming the problem and the fix (or a typed exception saying
so), never a traceback from inside Ray or pyarrow, and leaves no output behind. Every CLI entry
point of the project (found in dvc.yaml, pyproject.toml and the code) has a case."""

from __future__ import annotations

import ast
import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import fresh_mlflow_db
from PIL import Image

from lincore import CouplingFlow, Dense, Idempotent, Linearizer, filters
from lincore.generators import ProjectiveGenerator, StyleTransfer
from pipelines.commands import cli as sample_cli
from pipelines.commands import cluster_check, projective, style
from pipelines.data import read_split
from pipelines.entry import cli
from pipelines.stages import evaluate, prepare, train
from sweeps import cli as tune

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
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


# (id, the entry point's main, argv(tmp, prepared folder), words the one-line error must hold)
CLI_CASES: list[tuple[str, Callable, Callable[[Path, Path], list[str]], str]] = [
    (
        "unknown section",
        prepare.main,
        lambda t, d: ["--params", params(t, trainer={"a": 1})],
        "unknown section 'trainer'",
    ),
    (
        "unknown key",
        train.main,
        lambda t, d: ["--params", params(t, model={"rnk": 2}), "--data", str(d)],
        "unknown key 'model.rnk'",
    ),
    (
        "wrong type",
        train.main,
        lambda t, d: ["--params", params(t, model={"rank": "four"}), "--data", str(d)],
        "model.rank must be an integer",
    ),
    (
        "depth below 1",
        train.main,
        lambda t, d: ["--params", params(t, model={"depth": 0}), "--data", str(d)],
        "model.depth must be >= 1",
    ),
    (
        "negative lr",
        train.main,
        lambda t, d: ["--params", params(t, train={"lr": -1}), "--data", str(d)],
        "train.lr must be > 0",
    ),
    (
        "unknown data set",
        prepare.main,
        lambda t, d: ["--params", params(t, data={"name": "x"})],
        "data.name 'x' is unknown; allowed",
    ),
    (
        "bool for int",
        train.main,
        lambda t, d: ["--params", params(t, train={"epochs": True}), "--data", str(d)],
        "train.epochs must be an integer",
    ),
    (
        "empty sweep space",
        tune.main,
        lambda t, d: ["--params", params(t, sweep={"space": {}}), "--data", str(d)],
        "sweep.space must be a non-empty mapping",
    ),
    (
        "unknown distribution",
        tune.main,
        lambda t, d: [
            "--params",
            params(t, sweep={"space": {"model.rank": {"normal": [1, 2]}}}),
            "--data",
            str(d),
        ],
        "unknown distribution",
    ),
    (
        "untunable key",
        tune.main,
        lambda t, d: [
            "--params",
            params(t, sweep={"space": {"train.storage_path": {"choice": ["x"]}}}),
            "--data",
            str(d),
        ],
        "not a tunable key",
    ),
    (
        "malformed yaml",
        prepare.main,
        lambda t, d: ["--params", str(_write(t, "p.yaml", "model: [rank: 3\n"))],
        "is not valid YAML",
    ),
    (
        "missing params file",
        prepare.main,
        lambda t, d: ["--params", str(t / "none.yaml")],
        "params file not found",
    ),
    (
        "missing data.path",
        prepare.main,
        lambda t, d: [
            "--params",
            params(t, data={"name": "path", "path": str(t / "nowhere.npz")}),
            "--out",
            str(t / "o"),
        ],
        "does not exist",
    ),
    (
        "npz without arrays",
        prepare.main,
        lambda t, d: [
            "--params",
            params(t, data={"name": "path", "path": npz(t, "e.npz")}),
            "--out",
            str(t / "o"),
        ],
        "holds no arrays",
    ),
    (
        "NaN in a data file",
        prepare.main,
        lambda t, d: [
            "--params",
            params(t, data={"name": "path", "path": npz(t, "n.npz", x=np.full((20, 2), np.nan))}),
            "--out",
            str(t / "o"),
        ],
        "contains NaN or inf",
    ),
    (
        "unknown file format",
        prepare.main,
        lambda t, d: [
            "--params",
            params(t, data={"name": "path", "path": str(_write(t, "d.txt", "1 2"))}),
            "--out",
            str(t / "o"),
        ],
        "d.txt",
    ),
    (
        "garbage parquet",
        train.main,
        lambda t, d: ["--params", params(t), "--data", corrupt(d, t, "garbage")],
        "not a readable Parquet file",
    ),
    (
        "truncated parquet",
        train.main,
        lambda t, d: ["--params", params(t), "--data", corrupt(d, t, "truncated")],
        "not a readable Parquet file",
    ),
    (
        "empty parquet",
        train.main,
        lambda t, d: ["--params", params(t), "--data", corrupt(d, t, "empty")],
        "has no rows",
    ),
    (
        "parquet without x",
        train.main,
        lambda t, d: ["--params", params(t), "--data", corrupt(d, t, "no-x")],
        "lacks the 'x' column",
    ),
    (
        "NaN in prepared data",
        train.main,
        lambda t, d: ["--params", params(t), "--data", corrupt(d, t, "nan")],
        "contains NaN or inf",
    ),
    (
        "rows vs shape",
        train.main,
        lambda t, d: ["--params", params(t), "--data", corrupt(d, t, "shape")],
        "do not match the shape",
    ),
    (
        "missing prepared data",
        train.main,
        lambda t, d: ["--params", params(t), "--data", str(t / "none")],
        "run `dvc repro prepare` first",
    ),
    (
        "impossible rank",
        train.main,
        lambda t, d: ["--params", params(t, model={"rank": 3}), "--data", str(d)],
        "model.rank=3 is impossible",
    ),
    (
        "unreachable MLflow",
        train.main,
        lambda t, d: [
            "--params",
            params(t, mlflow={"tracking_uri": "http://127.0.0.1:9"}),
            "--data",
            str(d),
        ],
        "MLflow tracking server http://127.0.0.1:9 is unreachable",
    ),
    (
        "sweep rank above D",
        tune.main,
        lambda t, d: [
            "--params",
            params(t, sweep={"space": {"model.rank": {"choice": [1, 5]}}}),
            "--data",
            str(d),
        ],
        "rank.choice=5 is impossible",
    ),
    (
        "sweep flag out of range",
        tune.main,
        lambda t, d: ["--params", params(t), "--data", str(d), "--max-epochs", "0"],
        "sweep.max_epochs must be >= 1",
    ),
    (
        "resume unknown sweep",
        tune.main,
        lambda t, d: [
            "--params",
            params(t, sweep={"space": {"model.rank": {"choice": [1, 2]}}}),
            "--data",
            str(d),
            "--resume",
            "nope",
        ],
        "no sweep to resume",
    ),
    (
        "missing model file",
        evaluate.main,
        lambda t, d: ["--params", params(t), "--data", str(d), "--model", str(t / "m")],
        "model.pt",
    ),
    (
        "invalid MLflow model URI",
        sample_cli.main,
        lambda t, d: ["sample", "--model", "models:/no-such-model/1"],
        "no-such-model",
    ),
    (
        "sample count",
        sample_cli.main,
        lambda t, d: ["sample", "--model", "x.pt", "--n", "0"],
        "--n must be >= 1",
    ),
    (
        "output outside the project",
        prepare.main,
        lambda t, d: ["--params", params(t), "--out", "../../escape"],
        "outside the project folder",
    ),
    (
        "output into the source",
        prepare.main,
        lambda t, d: ["--params", params(t), "--out", "lincore/data"],
        "points into the project's source",
    ),
    (
        "projector rank",
        projective.main,
        lambda t, d: ["--data", "moons", "--ranks", "2", "--out", str(t / "o")],
        "needs a rank in 1..1",
    ),
    (
        "unknown style",
        style.main,
        lambda t, d: ["--styles", "oil", "--out", str(t / "o")],
        "unknown style 'oil'",
    ),
    (
        "sepia on grey digits",
        style.main,
        lambda t, d: ["--content", "digits", "--styles", "sepia", "--out", str(t / "o")],
        "sepia needs RGB",
    ),
    (  # a pid above any pid_max: an audit of no process must not pass
        "cluster-check of no Ray",
        cluster_check.main,
        lambda t, d: ["--pid", "999999999"],
        "no running Ray process found",
    ),
    (
        "linearizer cluster-check of no Ray",
        sample_cli.main,
        lambda t, d: ["cluster-check", "--pid", "999999999"],
        "no running Ray process found",
    ),
]


def _write(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text)
    return tmp / name


@pytest.mark.parametrize(
    ("case", "main", "argv", "words"), CLI_CASES, ids=[c[0] for c in CLI_CASES]
)
def test_bad_cli_input_exits_2_with_one_clear_line(
    case, main, argv, words, tmp_path, moons, capsys, monkeypatch
):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if case != "unreachable MLflow":  # never touch the project's own mlflow.db
        monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_mlflow_db(tmp_path / "mlflow.db"))
    args = argv(tmp_path, moons)
    with pytest.raises(SystemExit) as exit_:
        cli(main)(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert words in err, err
    last = err.strip().splitlines()[-1]  # (MLflow may log INFO lines before it)
    assert last.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing half


API_CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    (
        "projector rank = D",
        lambda: ProjectiveGenerator.build((4,), 4),
        ValueError,
        r"rank must be an integer in 1\.\.3",
    ),
    ("idempotent rank = dim", lambda: Idempotent(3, rank=3), ValueError, "rank-3 projector is"),
    (
        "style index",
        lambda: StyleTransfer.build((3, 4, 4), 1, depth=1).transfer(torch.rand(1, 3, 4, 4), 1),
        IndexError,
        r"style must be in 0\.\.0",
    ),
    (
        "image too small",
        lambda: StyleTransfer.build((3, 3, 3), 1),
        ValueError,
        "too small or odd for the 2x2 squeeze",
    ),
    (
        "operator vs network dims",
        lambda: Linearizer(CouplingFlow(3, 1, 8), Dense(4, 4)),
        ValueError,
        "build A with dim_in=3",
    ),
    ("wrong input shape", lambda: CouplingFlow(3, 1, 8)(torch.rand(2, 4)), ValueError, "x"),
    (
        "unknown filter",
        lambda: filters.apply("oil", torch.rand(1, 3, 4, 4)),
        ValueError,
        "unknown style filter 'oil'",
    ),
]


@pytest.mark.parametrize(
    ("case", "call", "kind", "words"), API_CASES, ids=[c[0] for c in API_CASES]
)
def test_bad_api_input_raises_a_typed_error_naming_the_argument(case, call, kind, words):
    with pytest.raises(kind, match=words):
        call()


PACKAGES = ("pipelines", "sweeps")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _wraps_main(path: Path) -> bool:
    """Whether the module wraps its ``main`` with ``entry.cli`` (``cli(main)``)."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "cli"
        and [ast.unparse(arg) for arg in node.args] == ["main"]
        for node in ast.walk(ast.parse(path.read_text()))
    )


def _run_by(module: str) -> str:
    """The module whose ``main`` ``python -m <module>`` runs: the module itself, or for a package
    the project module its ``__main__`` imports the entry point from."""
    folder = ROOT / module.replace(".", "/")
    if not folder.is_dir():
        return module
    tree = ast.parse((folder / "__main__.py").read_text())
    (source,) = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES
    }
    return source


def declared_entry_points() -> dict[str, str]:
    """The modules whose ``main`` a process starts in, from the project's own declarations:
    ``dvc.yaml``'s stage commands (``python -m ...``) and ``pyproject.toml``'s console scripts,
    each with where it is declared."""
    found = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        cmd = stage["cmd"].split()
        assert cmd[:2] == ["python", "-m"], f"stage {name}: {stage['cmd']}"
        found[_run_by(cmd[2])] = f"dvc.yaml stage {name!r}"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        found[target.split(":")[0]] = f"console script {name!r}"
    return found


def entry_points() -> dict[str, str]:
    """Every CLI entry point: the declared ones, and every module of the project that wraps its
    ``main`` with ``entry.cli`` (``python -m`` commands such as the application demos)."""
    wrapped = {
        _module(path): "wraps main with entry.cli"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if _wraps_main(path)
    }
    return {**wrapped, **declared_entry_points()}


def test_every_declared_entry_point_runs_through_the_cli_wrapper():
    declared = declared_entry_points()
    assert {"pipelines.stages.prepare", "sweeps.cli", "pipelines.commands.cli"} <= set(declared)
    unwrapped = {
        module: where
        for module, where in declared.items()
        if not _wraps_main(ROOT / f"{module.replace('.', '/')}.py")
    }
    assert not unwrapped, f"no entry.cli(main), so no one-line errors: {unwrapped}"


def test_every_entry_point_has_a_bad_input_case():
    covered = {main.__module__ for _, main, _, _ in CLI_CASES}
    missing = {m: where for m, where in entry_points().items() if m not in covered}
    assert not missing, f"entry points without a case in CLI_CASES: {missing}"


# --- data files users have on disk: every refusal names the file (and the fix) ---------------


def _idx_files(
    folder: Path, n: int, *, labels: int | None = None, gz: bool = False, keep: float = 1.0
) -> Path:
    """``train-images-idx3-ubyte`` of ``n`` 4x4 images (the first ``keep`` of its bytes), with a
    labels file of ``labels`` labels when given."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = np.array([2051, n, 4, 4], dtype=">u4").tobytes() + bytes(range(16)) * n
    files = {"train-images-idx3-ubyte": raw}
    if labels is not None:
        head = np.array([2049, labels], dtype=">u4").tobytes()
        files["train-labels-idx1-ubyte"] = head + bytes(labels)
    for name, content in files.items():
        content = gzip.compress(content) if gz else content
        (folder / (name + (".gz" if gz else ""))).write_bytes(content[: int(len(content) * keep)])
    return folder / ("train-images-idx3-ubyte" + (".gz" if gz else ""))


def _pngs(folder: Path, n: int, odd: str, image: Image.Image) -> Path:
    """``n`` 4x4 grey PNGs in ``folder``, and ``image`` saved as ``odd`` among them."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (4, 4), 10 * i).save(folder / f"{i:02d}.png")
    image.save(folder / odd)
    return folder / odd


def _labels_mismatch(t: Path) -> tuple[Path, list[str]]:
    images = _idx_files(t / "mnist", 20, labels=19)
    return images, [str(images), str(t / "mnist" / "train-labels-idx1-ubyte"), "19 labels"]


def _cifar_size(t: Path) -> tuple[Path, list[str]]:
    folder = t / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "data_batch_1.bin").write_bytes(bytes(3073 * 10))
    (folder / "data_batch_2.bin").write_bytes(bytes(3073 * 10 + 5))
    return folder, [str(folder / "data_batch_2.bin"), "not a multiple of 3073"]


def _corrupt_image(t: Path) -> tuple[Path, list[str]]:
    bad = _pngs(t / "imgs", 12, "05b.png", Image.new("L", (4, 4)))
    bad.write_bytes(b"\x89PNG not really")
    return bad.parent, [str(bad), "cannot read image"]


# (id, make(tmp) -> (data.path, words the one-line error must hold, the file's name first))
DATA_FILE_CASES: list[tuple[str, Callable[[Path], tuple[Path, list[str]]]]] = [
    ("IDX labels count differs", _labels_mismatch),
    (
        "truncated IDX",
        lambda t: (p := _idx_files(t / "m", 20, keep=0.8), [str(p), "is truncated"]),
    ),
    (
        "truncated gzip IDX",
        lambda t: (p := _idx_files(t / "m", 20, gz=True, keep=0.6), [str(p), "truncated"]),
    ),
    (
        "IDX labels file as data.path",
        lambda t: (
            p := _idx_files(t / "m", 20, labels=20).with_name("train-labels-idx1-ubyte"),
            [str(p), "is an IDX labels file"],
        ),
    ),
    ("CIFAR batch of the wrong size", _cifar_size),
    (
        "image folder with mixed channels",
        lambda t: (
            (p := _pngs(t / "imgs", 12, "05b.png", Image.new("RGB", (4, 4)))).parent,
            [str(p), "set data.channels"],
        ),
    ),
    (
        "image folder with mixed sizes",
        lambda t: (
            (p := _pngs(t / "imgs", 12, "05b.png", Image.new("L", (5, 4)))).parent,
            [str(p), "set data.image_size"],
        ),
    ),
    ("unreadable image", _corrupt_image),
    (
        "npz labels of another length",
        lambda t: (
            p := Path(npz(t, "d.npz", x=np.zeros((20, 3)), y=np.zeros(19))),
            [str(p), "one label per sample"],
        ),
    ),
]


@pytest.mark.parametrize(("case", "make"), DATA_FILE_CASES, ids=[c[0] for c in DATA_FILE_CASES])
def test_bad_data_files_are_refused_naming_the_file(case, make, tmp_path, capsys):
    path, words = make(tmp_path)
    argv = ["--params", params(tmp_path, data={"name": "path", "path": str(path)})]
    with pytest.raises(SystemExit) as exit_:
        cli(prepare.main)([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert all(w in err for w in words), (words, err)
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing half


def test_idx_without_labels_is_prepared_unlabelled_with_a_note(tmp_path, capsys):
    images = _idx_files(tmp_path / "mnist", 20)
    argv = ["--params", params(tmp_path, data={"name": "path", "path": str(images)})]
    cli(prepare.main)([*argv, "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    (note,) = [line for line in out.splitlines() if line.startswith("note:")]
    assert str(images) in note and "classifier Fréchet score" in note
    for split in ("train", "val", "test"):
        x, labels, meta = read_split(tmp_path / "o" / f"{split}.parquet")
        assert (labels == -1).all() and x.shape[1:] == (1, 4, 4) and meta["bins"] == "256"
