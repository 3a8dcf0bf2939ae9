"""``params.yaml`` into frozen dataclasses, validated once at the edge.

Every key is known: an unknown key, a wrong type or an out-of-range value is a ``ConfigError``
naming the key and what is allowed, before any heavy work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("digits", "moons", "checkerboard", "eight_gaussians", "spirals", "path")


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    """digits | moons | checkerboard | eight_gaussians | spirals | path"""
    path: str = ""
    """for name=path: a local .npz, .parquet, MNIST IDX file, or a folder of images"""
    n_samples: int = 20000
    """number of points generated for the 2-D toys"""
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: int = 0
    """for an image folder: resize to this square size (0 keeps the size of the first image)"""
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    rank: int = 16
    """rank r of the time-conditioned operator A_t (1..D)"""
    depth: int = 6
    """coupling blocks in the invertible network g"""
    hidden: int = 128
    operator_hidden: int = 128
    flow: str = "coupling"
    """coupling (MLP couplings on flattened samples) | image (Glow-style, needs C, H, W)"""
    two_networks: bool = False
    sigma: float = 0.3
    w_latent: float = 1.0
    w_noise_reconstruction: float = 1.0
    w_data_reconstruction: float = 1.0
    w_prediction: float = 1.0
    w_data_likelihood: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.002
    seed: int = 0
    num_workers: int = 1
    """Ray Train workers (DDP). 0 runs the loop in the driver process (no worker actors)"""
    use_gpu: bool = False
    storage_path: str = "ray_results"
    """Ray checkpoints and run state; shared storage on a cluster"""
    checkpoints_to_keep: int = 2
    max_failures: int = 2
    """worker-group restarts from the latest checkpoint before the run fails"""
    max_roundtrip_error: float = 0.001
    """fail the run when max|g^-1(g(x)) - x| on a validation batch exceeds this (float32)"""


@dataclass(frozen=True)
class EvaluateConfig:
    steps: int = 100
    """sampler steps T collapsed into one matrix"""
    n_samples: int = 0
    """samples drawn for the quality metrics (0: as many as the test split)"""
    grid: int = 64


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    """overridden by the MLFLOW_TRACKING_URI environment variable"""
    experiment: str = "linearizer"
    artifact_location: str = "mlartifacts"


@dataclass(frozen=True)
class SweepConfig:
    num_samples: int = 4
    max_epochs: int = 6
    max_concurrent_trials: int = 2
    workers_per_trial: int = 0
    """Ray Train workers per trial; 0 trains inside the trial process (fastest on a laptop)"""
    metric: str = "val_loss"
    objectives: str = "single"
    """single | pareto (one-step MMD vs parameter count)"""
    rank: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32])
    depth: list[int] = field(default_factory=lambda: [2, 4, 6])
    hidden: list[int] = field(default_factory=lambda: [64, 128])
    lr: list[float] = field(default_factory=lambda: [0.0005, 0.005])
    """log-uniform bounds"""
    w_data_likelihood: list[float] = field(default_factory=lambda: [0.0, 1.0])
    """uniform bounds"""
    registry_name: str = "linearizer-one-step"
    seed: int = 0


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"model.rank": 16, ...}``: the form MLflow params take."""
        return {
            f"{section.name}.{f.name}": getattr(getattr(self, section.name), f.name)
            for section in dataclasses.fields(self)
            for f in dataclasses.fields(getattr(self, section.name))
        }


def _check_value(key: str, value: Any, kind: Any) -> Any:
    """``value`` checked against the field's type (``int``, ``float``, ``bool``, ``str``,
    ``list[...]``); YAML gives ``3`` for a float field, so ints are accepted there."""
    if typing.get_origin(kind) is list:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{key} must be a non-empty list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    wrong = isinstance(value, bool) != (kind is bool) or not isinstance(value, kind)
    if wrong:
        noun = {int: "an integer", bool: "true or false", str: "a string"}[kind]
        raise ConfigError(f"{key} must be {noun}, got {value!r}")
    return value


def _section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"'{name}' must be a mapping of keys to values, got {raw!r}")
    kinds = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(kinds))
    if unknown:
        raise ConfigError(
            f"unknown key '{name}.{unknown[0]}' in params.yaml; "
            f"allowed keys in '{name}': {', '.join(kinds)}"
        )
    return cls(**{k: _check_value(f"{name}.{k}", v, kinds[k]) for k, v in raw.items()})


def _validate(cfg: Config) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    d, m, t, e, s = cfg.data, cfg.model, cfg.train, cfg.evaluate, cfg.sweep
    need(d.name in DATASETS, f"data.name {d.name!r} is unknown; allowed: {', '.join(DATASETS)}")
    need(d.name != "path" or bool(d.path), "data.name is 'path': set data.path to a local file")
    need(d.n_samples >= 10, f"data.n_samples must be >= 10, got {d.n_samples}")
    need(0 < d.val_fraction < 0.5, f"data.val_fraction must be in (0, 0.5), got {d.val_fraction}")
    need(
        0 < d.test_fraction < 0.5, f"data.test_fraction must be in (0, 0.5), got {d.test_fraction}"
    )
    need(d.image_size >= 0, f"data.image_size must be >= 0, got {d.image_size}")
    for key in ("rank", "depth", "hidden", "operator_hidden"):
        need(getattr(m, key) >= 1, f"model.{key} must be >= 1, got {getattr(m, key)}")
    need(m.flow in ("coupling", "image"), f"model.flow must be coupling or image, got {m.flow!r}")
    need(m.sigma >= 0, f"model.sigma must be >= 0, got {m.sigma}")
    for key in ("epochs", "batch_size", "checkpoints_to_keep"):
        need(getattr(t, key) >= 1, f"train.{key} must be >= 1, got {getattr(t, key)}")
    need(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    need(t.num_workers >= 0, f"train.num_workers must be >= 0, got {t.num_workers}")
    need(t.max_failures >= 0, f"train.max_failures must be >= 0, got {t.max_failures}")
    need(t.max_roundtrip_error > 0, "train.max_roundtrip_error must be > 0")
    need(e.steps >= 2, f"evaluate.steps must be >= 2, got {e.steps}")
    need(e.n_samples >= 0 and e.grid >= 1, "evaluate.n_samples must be >= 0 and grid >= 1")
    need(s.num_samples >= 1, f"sweep.num_samples must be >= 1, got {s.num_samples}")
    need(s.max_epochs >= 1, f"sweep.max_epochs must be >= 1, got {s.max_epochs}")
    need(s.max_concurrent_trials >= 1, "sweep.max_concurrent_trials must be >= 1")
    need(s.workers_per_trial >= 0, "sweep.workers_per_trial must be >= 0")
    need(s.objectives in ("single", "pareto"), "sweep.objectives must be single or pareto")
    need(min(s.rank) >= 1, f"sweep.rank values must be >= 1, got {s.rank}")
    need(min(s.depth) >= 1, f"sweep.depth values must be >= 1, got {s.depth}")
    need(min(s.hidden) >= 1, f"sweep.hidden values must be >= 1, got {s.hidden}")
    need(len(s.lr) == 2 and 0 < s.lr[0] <= s.lr[1], f"sweep.lr must be [low, high] > 0, got {s.lr}")
    need(
        len(s.w_data_likelihood) == 2 and 0 <= s.w_data_likelihood[0] <= s.w_data_likelihood[1],
        f"sweep.w_data_likelihood must be [low, high] >= 0, got {s.w_data_likelihood}",
    )


def parse(raw: Any) -> Config:
    """A validated ``Config`` from the parsed YAML mapping."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml must be a mapping of sections (data, model, train, ...)")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(
            f"unknown section '{unknown[0]}' in params.yaml; allowed: {', '.join(sections)}"
        )
    kinds = typing.get_type_hints(Config)
    cfg = Config(**{k: _section(k, kinds[k], v) for k, v in raw.items()})
    _validate(cfg)
    return cfg


def load(path: str | os.PathLike[str] = ROOT / "params.yaml") -> Config:
    """Read and validate ``params.yaml``; a missing or malformed file is a ``ConfigError``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"params file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p} is not valid YAML: {err}") from None
    return parse(raw)


def resolve(path: str, *, base: Path = ROOT) -> Path:
    """An output/input path from params, absolute (``ray job submit`` runs in a copy)."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base / p).resolve()
