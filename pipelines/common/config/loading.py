"""Reading ``params.yaml`` into the schema, validated once at the edge.

Every key is known: an unknown key, a wrong type or an out-of-range value is a ``ConfigError``
naming the key and what is allowed, before any heavy work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from lincore.operators import OPERATOR_KINDS
from pipelines.common.config.paths import ROOT
from pipelines.common.config.schema import (
    DATASETS,
    DISTRIBUTIONS,
    SWEEP_METRICS,
    TUNABLE_SECTIONS,
    UNTUNABLE,
    Config,
    SweepConfig,
)
from pipelines.common.errors import ConfigError


def _check_value(key: str, value: Any, kind: Any) -> Any:
    """``value`` checked against the field's type (``int``, ``float``, ``bool``, ``str``,
    ``list[...]``); YAML gives ``3`` for a float field, so ints are accepted there."""
    if typing.get_origin(kind) is dict:
        if not isinstance(value, dict) or not value:
            raise ConfigError(f"{key} must be a non-empty mapping, got {value!r}")
        return value
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
    need(
        m.operator in OPERATOR_KINDS,
        f"model.operator must be one of {', '.join(OPERATOR_KINDS)}, got {m.operator!r}",
    )
    need(m.sigma >= 0, f"model.sigma must be >= 0, got {m.sigma}")
    for key in ("epochs", "batch_size", "checkpoints_to_keep"):
        need(getattr(t, key) >= 1, f"train.{key} must be >= 1, got {getattr(t, key)}")
    need(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    need(
        t.lr_schedule in ("cosine", "constant"),
        f"train.lr_schedule must be cosine or constant, got {t.lr_schedule!r}",
    )
    need(t.num_workers >= 0, f"train.num_workers must be >= 0, got {t.num_workers}")
    need(t.max_failures >= 0, f"train.max_failures must be >= 0, got {t.max_failures}")
    need(t.max_roundtrip_error > 0, "train.max_roundtrip_error must be > 0")
    need(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    need(t.image_every >= 0, f"train.image_every must be >= 0, got {t.image_every}")
    need(e.steps >= 2, f"evaluate.steps must be >= 2, got {e.steps}")
    need(e.n_samples >= 0 and e.grid >= 1, "evaluate.n_samples must be >= 0 and grid >= 1")
    need(s.num_samples >= 1, f"sweep.num_samples must be >= 1, got {s.num_samples}")
    need(s.max_epochs >= 1, f"sweep.max_epochs must be >= 1, got {s.max_epochs}")
    need(s.max_concurrent_trials >= 1, "sweep.max_concurrent_trials must be >= 1")
    need(s.workers_per_trial >= 0, "sweep.workers_per_trial must be >= 0")
    need(s.objectives in ("single", "pareto"), "sweep.objectives must be single or pareto")
    need(
        s.search in ("optuna", "random"), f"sweep.search must be optuna or random, got {s.search!r}"
    )
    need(
        s.scheduler in ("asha", "none"),
        f"sweep.scheduler must be asha or none, got {s.scheduler!r}",
    )
    need(
        s.metric in SWEEP_METRICS,
        f"sweep.metric {s.metric!r} is unknown; allowed: {', '.join(SWEEP_METRICS)}",
    )
    need(s.grace_period >= 1, f"sweep.grace_period must be >= 1, got {s.grace_period}")
    for key, spec in s.space.items():
        _check_dimension(cfg, key, spec)


def _check_dimension(cfg: Config, key: str, spec: Any) -> None:
    """One ``sweep.space`` entry: a tunable key, a known distribution, values that are valid."""
    where = f"sweep.space.{key}"
    section, _, name = key.partition(".")
    kinds = (
        typing.get_type_hints(type(getattr(cfg, section))) if section in TUNABLE_SECTIONS else {}
    )
    if name not in kinds or key in UNTUNABLE:
        tunable = [
            f"{s}.{k}"
            for s in TUNABLE_SECTIONS
            for k in typing.get_type_hints(type(getattr(cfg, s)))
            if f"{s}.{k}" not in UNTUNABLE
        ]
        raise ConfigError(f"{where}: not a tunable key; tunable keys: {', '.join(tunable)}")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where} must be one {{distribution: values}} pair, e.g. {{choice: [2, 4]}}"
        )
    ((dist, values),) = spec.items()
    if dist not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}: unknown distribution {dist!r}; allowed: {', '.join(DISTRIBUTIONS)}"
        )
    kind = kinds[name]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{dist} must be a non-empty list, got {values!r}")
    if dist != "choice":
        numeric = kind is float or (kind is int and dist == "randint")
        if not numeric or len(values) != 2:
            raise ConfigError(
                f"{where}.{dist} needs [low, high] bounds on a "
                f"{'float' if dist != 'randint' else 'integer'} key ({key} is {kind.__name__})"
            )
        low, high = (_check_value(f"{where}.{dist}", v, kind) for v in values)
        if not low <= high or (dist == "loguniform" and low <= 0):
            raise ConfigError(f"{where}.{dist}: bounds must satisfy 0 < low <= high for loguniform "
                              f"and low <= high otherwise, got {values}")  # fmt: skip
        values = [low, high]
    for v in values:
        v = _check_value(f"{where}.{dist}", v, kind)
        try:
            _validate(dataclasses.replace(
                cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: v})},
                sweep=SweepConfig(space={}),
            ))  # fmt: skip
        except ConfigError as err:
            raise ConfigError(f"{where}: value {v!r} is invalid: {err}") from None


def apply_trial(cfg: Config, trial: dict[str, Any]) -> Config:
    """``cfg`` with a trial's ``{"model.rank": 8, ...}`` values put in their sections."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in trial.items():
        section, _, name = key.partition(".")
        kind = typing.get_type_hints(type(getattr(cfg, section)))[name]
        changes.setdefault(section, {})[name] = kind(value)
    return dataclasses.replace(
        cfg, **{sec: dataclasses.replace(getattr(cfg, sec), **kv) for sec, kv in changes.items()}
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
        where = " ".join(str(err).split())  # one line: YAML's message spans several
        raise ConfigError(f"{p} is not valid YAML: {where}") from None
    return parse(raw)
