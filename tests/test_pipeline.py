"""The pipeline's edges: params validation, the Parquet contract, checkpoints, clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import fresh_mlflow_db

from lincore.generators import OneStepFlowMatching
from pipelines import data, tracking
from pipelines.config import DataConfig, ModelConfig, check_rank, load, parse
from pipelines.errors import ConfigError, DataError, ServiceError
from pipelines.model import checkpoints as checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_params_file_is_valid():
    cfg = load(ROOT / "params.yaml")
    assert cfg.data.name == "digits" and cfg.train.num_workers >= 1
    assert "model.rank" in cfg.to_flat_dict()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model": {"rnak": 4}}, "unknown key 'model.rnak'.*allowed keys in 'model': rank"),
        ({"modle": {}}, "unknown section 'modle'.*allowed: data, model"),
        ({"model": {"rank": "four"}}, "model.rank must be an integer"),
        ({"model": {"rank": 2.5}}, "model.rank must be an integer"),
        ({"train": {"use_gpu": "yes"}}, "train.use_gpu must be true or false"),
        ({"train": {"lr": -1}}, "train.lr must be > 0"),
        ({"train": {"num_workers": -1}}, "train.num_workers must be >= 0"),
        ({"data": {"name": "mnist"}}, "data.name 'mnist' is unknown; allowed: digits"),
        ({"data": {"name": "path", "path": ""}}, "set data.path"),
        ({"model": {"depth": 0}}, "model.depth must be >= 1"),
        ({"model": {"flow": "glow"}}, "model.flow must be coupling or image"),
        ({"sweep": {"space": {}}}, "sweep.space must be a non-empty mapping"),
        (
            {"sweep": {"space": {"model.depth": {"choice": [0, 2]}}}},
            "value 0 is invalid: model.dep",
        ),
        ({"sweep": {"space": {"model.rank": {"normal": [1, 2]}}}}, "unknown distribution 'normal'"),
        ({"sweep": {"space": {"train.epochs": {"choice": [3]}}}}, "not a tunable key"),
        ({"sweep": {"space": {"train.lr": {"loguniform": [0, 1]}}}}, "0 < low <= high"),
        ({"sweep": {"space": {"model.rank": {"uniform": [1, 4]}}}}, "needs .low, high. bounds"),
        ({"sweep": {"metric": "accuracy"}}, "sweep.metric 'accuracy' is unknown; allowed: val_mmd"),
        ({"model": {"two_networks": "yes"}}, "model.two_networks must be true, false or auto"),
        ({"train": {"warmup": "yes"}}, "train.warmup must be auto or a share of the steps"),
        ({"train": {"warmup": 1}}, r"train.warmup must be .* in \[0, 1\), got 1.0"),
        ({"train": {"warmup": True}}, "train.warmup must be a number or a string, got True"),
        ({"train": "fast"}, "'train' must be a mapping"),
        (["data"], "params.yaml must be a mapping"),
    ],
)
def test_bad_params_name_the_key_and_the_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse(raw)


def test_the_full_objective_after_a_warm_up_gets_a_cosine_of_its_own():
    from pipelines.training.schedule import learning_rate

    cfg = parse({"train": {"lr": 0.01}}).train
    rates = [learning_rate(cfg, e, s, 10, 4, restart=36) for e in range(4) for s in range(10)]
    assert rates[0] == rates[36] == 0.01  # each phase starts at lr ...
    assert rates[35] < 1e-4 and rates[39] < 0.01  # ... and anneals towards 0
    assert all(rates[i] >= rates[i + 1] for i in range(35))
    plain = [learning_rate(cfg, e, s, 10, 4) for e in range(4) for s in range(10)]
    assert plain[0] == 0.01 and plain[36] < 1e-3  # without a warm-up: one cosine


def test_a_key_of_a_number_or_auto_takes_either():
    assert parse({"train": {"warmup": 0}}).train.warmup == 0.0
    assert parse({"train": {"warmup": 0.5}}).train.warmup == 0.5
    assert parse({}).train.warmup == "auto"


def test_missing_and_malformed_params_files(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [rank: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


def test_an_impossible_rank_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"model.rank=65 .* must be in 1..64"):
        check_rank(65, (1, 8, 8))
    check_rank(64, (1, 8, 8))


def test_prepare_writes_the_parquet_contract_deterministically(tmp_path):
    cfg = DataConfig(name="moons", n_samples=200, seed=3)
    for out in ("a", "b"):
        for name, part in data.split(data.build(cfg), cfg).items():
            data.write_split(tmp_path / out / f"{name}.parquet", part, seed=cfg.seed)
    schema = pq.read_schema(tmp_path / "a" / "train.parquet")
    footer = pq.read_metadata(tmp_path / "a" / "train.parquet").metadata  # written at the end
    meta = {k.decode(): v.decode() for k, v in footer.items()}
    assert json.loads(meta["shape"]) == [2] and meta["source"] == "lincore.toys.moons"
    assert meta["seed"] == "3" and len(json.loads(meta["value_range"])) == 2
    assert meta["rows"] == "140"
    x_type = schema.field("x").type
    assert x_type.list_size == 2 and str(x_type.value_type) == "float"
    xa, _, _ = data.read_split(tmp_path / "a" / "train.parquet")
    xb, _, _ = data.read_split(tmp_path / "b" / "train.parquet")
    assert xa.shape == (140, 2) and np.array_equal(xa, xb)
    assert not list(tmp_path.glob("a/.*.tmp")), "no temporary files left behind"


def test_digits_keep_their_image_shape_and_labels(tmp_path):
    ds = data.build(DataConfig(name="digits"))
    assert ds.shape == (1, 8, 8) and ds.x.min() > 0 and ds.x.max() < 1
    assert set(np.unique(ds.labels)) == set(range(10))


def test_bad_data_files_give_errors_that_name_the_path(tmp_path):
    with pytest.raises(DataError, match="missing; run `dvc repro prepare`"):
        data.read_split(tmp_path / "train.parquet")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"corrupt\.parquet is not a readable Parquet file"):
        data.read_split(corrupt)
    nan = tmp_path / "nan.npz"
    np.savez(nan, x=np.array([[np.nan, 1.0]] * 20))
    with pytest.raises(DataError, match="NaN"):
        data.build(DataConfig(name="path", path=str(nan)))
    with pytest.raises(DataError, match="does not exist"):
        data.build(DataConfig(name="path", path=str(tmp_path / "nowhere.npz")))
    odd = tmp_path / "x.csv"
    odd.write_text("1,2\n")
    with pytest.raises(DataError, match="unknown format"):
        data.build(DataConfig(name="path", path=str(odd)))


def test_local_files_npz_idx_and_image_folders(tmp_path):
    x = np.random.default_rng(0).random((30, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    assert data.build(DataConfig(name="path", path=str(tmp_path / "d.npz"))).shape == (1, 4, 4)
    raw = (x * 255).astype(np.uint8)
    header = np.array([2051, 30, 4, 4], dtype=">u4").tobytes()
    (tmp_path / "imgs-idx3-ubyte").write_bytes(header + raw.tobytes())
    ds = data.build(DataConfig(name="path", path=str(tmp_path / "imgs-idx3-ubyte")))
    assert ds.shape == (1, 4, 4) and ds.bins == 256  # 8-bit levels, dequantised
    assert np.array_equal(np.floor(ds.x * 256), raw)
    (tmp_path / "trunc-idx3-ubyte").write_bytes(header + raw.tobytes()[:100])
    with pytest.raises(DataError, match="truncated"):
        data.build(DataConfig(name="path", path=str(tmp_path / "trunc-idx3-ubyte")))
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(raw[i, 0]).save(folder / f"{i}.png")
    ds = data.build(DataConfig(name="path", path=str(folder), image_size=6))
    assert ds.shape == (1, 6, 6) and len(ds.x) == 12  # grey stays one channel


def test_checkpoints_round_trip_and_refuse_pickles(tmp_path):
    cfg = ModelConfig(rank=2, depth=2, hidden=8, operator_hidden=8)
    model = OneStepFlowMatching.build((4,), cfg)
    checkpoint.save(tmp_path / "m.pt", model, cfg, (4,))
    loaded, state = checkpoint.load(tmp_path / "m.pt")
    assert state["shape"] == [4]
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Exploit(), "model_config": {}, "shape": [4]}, evil)
    with pytest.raises(DataError, match="refused"):
        checkpoint.load(evil)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]) + b"garbage")
    with pytest.raises(DataError):
        checkpoint.load(tmp_path / "junk.pt")


def test_checkpoints_from_before_the_operator_key_load_and_sample(tmp_path):
    """A checkpoint written before ``model.operator`` existed holds the rank-only ``A_t``."""
    from pipelines.model.sampler import OneStepSampler

    cfg = ModelConfig(
        rank=2, depth=2, hidden=8, operator_hidden=8, operator="low_rank", w_one_step_likelihood=0.0
    )
    old = OneStepFlowMatching.build((1, 2, 2), cfg, seed=3)
    new_keys = ("operator", "w_one_step_likelihood")
    old_config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in new_keys}
    torch.save(
        {"state_dict": old.state_dict(), "model_config": old_config, "shape": [1, 2, 2]},
        tmp_path / "old.pt",
    )
    sampler = OneStepSampler.from_checkpoint(tmp_path / "old.pt", steps=10)
    assert sampler.model.operator.kind == "low_rank"
    x = sampler.sample(5, seed=1)
    noise = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, old.eval().sample_one_step(noise, old.collapse(10)))
    assert ModelConfig().operator == "isotropic_psd"  # new runs get the covering operator


def test_unreachable_services_are_clear_errors(monkeypatch):
    with pytest.raises(ServiceError, match=r"MLflow tracking server http://127\.0\.0\.1:9"):
        tracking.check_reachable("http://127.0.0.1:9")
    with pytest.raises(ServiceError, match="missing or not writable"):
        tracking.check_reachable("sqlite:////nonexistent-dir/mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.tracking_uri(parse({}).mlflow)
    assert uri.startswith("sqlite:////") and uri.endswith("/mlflow.db")


def run_stage(*args, env=None, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_stage_errors_exit_2_with_one_line_and_no_traceback(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  nmae: moons\n")  # prepare reads (and checks) only data
    r = run_stage("pipelines.stages.prepare", "--params", str(params), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown key 'data.nmae'" in r.stderr
    params.write_text("train:\n  epochs: 1\n")
    r = run_stage(
        "pipelines.stages.train",
        "--params",
        str(params),
        "--data",
        str(tmp_path),
        env={"RAY_ADDRESS": "127.0.0.1:9"},
    )
    assert r.returncode == 2 and "prepared data" in r.stderr and "Traceback" not in r.stderr
    db = {"MLFLOW_TRACKING_URI": fresh_mlflow_db(tmp_path / "m.db")}
    r = run_stage(
        "pipelines.commands.cli",
        "sample",
        "--model",
        "models:/does-not-exist",
        "--out",
        str(tmp_path / "g.png"),
        env=db,
    )
    assert r.returncode == 2 and "cannot load MLflow model" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "g.png").exists()


def test_an_unreachable_ray_address_is_refused(monkeypatch):
    from pipelines import ray_runtime

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    with pytest.raises(ServiceError, match="cannot reach the Ray cluster at RAY_ADDRESS"):
        ray_runtime.init()


def test_every_loss_weight_is_a_params_key():
    from dataclasses import fields

    from lincore.generators import LossWeights

    cfg = ModelConfig(rank=2, depth=2, hidden=8, w_latent=2.0, w_data_likelihood=0.0)
    model = OneStepFlowMatching.build((4,), cfg)
    assert model.weights.latent == 2.0 and model.weights.data_likelihood == 0.0
    assert {f"w_{f.name}" for f in fields(LossWeights)} <= {f.name for f in fields(ModelConfig)}


@pytest.mark.slow
def test_the_local_ray_node_stays_on_loopback_and_is_the_one_ray_tools_find():
    """Node address 127.0.0.1; and the address file Ray's State API reads names this cluster,
    not another one's (a stale `ray start`, or a second local pipeline): that would kill Ray
    Train's placement-group cleaner and hang the next sweep trial."""
    shared = Path("/tmp/ray/ray_current_cluster")
    shared.parent.mkdir(parents=True, exist_ok=True)
    shared.write_text("127.0.0.1:1")  # a cluster long gone
    code = (
        "from pipelines import ray_runtime; ray_runtime.init(dashboard=False); "
        "import ray, os; "
        "from ray._common.utils import get_ray_address_file as f; "
        "print('node', ray.util.get_node_ip_address()); "
        "print('gcs', ray.get_runtime_context().gcs_address); "
        "print('file', open(f(None)).read()); print('tmp', os.environ['RAY_TMPDIR']); "
        "ray.shutdown()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert "node 127.0.0.1" in r.stdout, r.stdout + r.stderr[-2000:]
    said = dict(ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln)
    assert said["gcs"].startswith("127.0.0.1:") and said["file"] == said["gcs"]
    assert said["tmp"].startswith("/tmp/lzr-")  # its own folder: the shared file is untouched
    assert shared.read_text() == "127.0.0.1:1"
