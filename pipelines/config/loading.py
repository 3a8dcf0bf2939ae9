"""Reading ``params.yaml`` into the schema, validated once at the edge.

Every key is known: an unknown key, a wrong type or an out-of-range value is a ``ConfigError``
naming the key and what is allowed, before any heavy work starts. Each stage loads only the
sections it reads (``load(path, sections=SECTIONS)``) and each section is validated on its own,
so a mistake in ``sweep`` does not stop ``prepare``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from lincore.generators import COUPLINGS, FLOWS, PIXELS
from lincore.operators import OPERATOR_KINDS
from pipelines.config.paths import PARAMS_FILE
from pipelines.config.schema import (
    DATASETS,
    DISTRIBUTIONS,
    PRECISIONS,
    RECOMPUTE,
    SECTIONS,
    SWEEP_METRICS,
    TUNABLE_SECTIONS,
    UNTUNABLE,
    Config,
    DataConfig,
    EvaluateConfig,
    MlflowConfig,
    ModelConfig,
    SweepConfig,
    TrainConfig,
    UnreadSection,
)
from pipelines.errors import ConfigError


def _check_value(key: str, value: Any, kind: Any) -> Any:
    """``value`` checked against the field's type (``int``, ``float``, ``bool``, ``str``,
    ``list[...]``, or a union such as ``float | str`` for a number or ``auto``); YAML gives
    ``3`` for a float field, so ints are accepted there."""
    if isinstance(kind, types.UnionType):
        for member in typing.get_args(kind):
            try:
                return _check_value(key, value, member)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_noun(kind)}, got {value!r}")
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
        raise ConfigError(f"{key} must be {_noun(kind)}, got {value!r}")
    return value


def _noun(kind: Any) -> str:
    if isinstance(kind, types.UnionType):
        return " or ".join(_noun(member) for member in typing.get_args(kind))
    nouns = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return nouns.get(kind, getattr(kind, "__name__", str(kind)))


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


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate_data(d: DataConfig) -> None:
    _need(d.name in DATASETS, f"data.name {d.name!r} is unknown; allowed: {', '.join(DATASETS)}")
    _need(
        d.name != "path" or bool(d.path),
        "data.name is 'path': set data.path to a local file or folder (default data/raw)",
    )
    _need(d.n_samples >= 10, f"data.n_samples must be >= 10, got {d.n_samples}")
    _need(0 < d.val_fraction < 0.5, f"data.val_fraction must be in (0, 0.5), got {d.val_fraction}")
    _need(
        0 < d.test_fraction < 0.5, f"data.test_fraction must be in (0, 0.5), got {d.test_fraction}"
    )
    _need(d.image_size >= 0, f"data.image_size must be >= 0, got {d.image_size}")
    _need(d.channels in (0, 1, 3), f"data.channels must be 0 (keep), 1 or 3, got {d.channels}")
    _need(
        d.layout in ("auto", "nchw", "nhwc"),
        f"data.layout must be auto, nchw or nhwc, got {d.layout!r}",
    )


def _validate_model(m: ModelConfig) -> None:
    for key in ("rank", "depth", "hidden", "operator_hidden"):
        _need(getattr(m, key) >= 1, f"model.{key} must be >= 1, got {getattr(m, key)}")
    _need(m.flow in FLOWS, f"model.flow must be {' or '.join(FLOWS)}, got {m.flow!r}")
    _need(
        m.coupling in COUPLINGS,
        f"model.coupling must be one of {', '.join(COUPLINGS)}, got {m.coupling!r}",
    )
    _need(m.levels >= 0, f"model.levels must be >= 0 (0 = auto), got {m.levels}")
    _need(m.pixels in PIXELS, f"model.pixels must be one of {', '.join(PIXELS)}, got {m.pixels!r}")
    _need(
        m.operator in OPERATOR_KINDS,
        f"model.operator must be one of {', '.join(OPERATOR_KINDS)}, got {m.operator!r}",
    )
    _need(m.sigma >= 0, f"model.sigma must be >= 0, got {m.sigma}")
    _need(
        m.two_networks in (True, False, "auto"),
        f"model.two_networks must be true, false or auto, got {m.two_networks!r}",
    )


def _validate_train(t: TrainConfig) -> None:
    for key in ("epochs", "batch_size", "checkpoints_to_keep"):
        _need(getattr(t, key) >= 1, f"train.{key} must be >= 1, got {getattr(t, key)}")
    _need(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _need(
        t.lr_schedule in ("cosine", "constant"),
        f"train.lr_schedule must be cosine or constant, got {t.lr_schedule!r}",
    )
    _need(t.num_workers >= 0, f"train.num_workers must be >= 0, got {t.num_workers}")
    _need(t.max_failures >= 0, f"train.max_failures must be >= 0, got {t.max_failures}")
    _need(t.max_roundtrip_error > 0, "train.max_roundtrip_error must be > 0")
    _need(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    _need(t.image_every >= 0, f"train.image_every must be >= 0, got {t.image_every}")
    _need(
        t.recompute in RECOMPUTE,
        f"train.recompute must be one of {', '.join(RECOMPUTE)}, got {t.recompute!r}",
    )
    _need(
        t.precision in PRECISIONS,
        f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}",
    )
    _need(
        t.precision != "fp16" or t.use_gpu,
        "train.precision fp16 needs train.use_gpu: true (fp16 autocast and its GradScaler are "
        "CUDA-only); on CPUs use bf16 or fp32",
    )
    _need(
        t.loader in ("auto", "memory", "ray_data"),
        f"train.loader must be auto, memory or ray_data, got {t.loader!r}",
    )
    _need(
        t.warmup == "auto" or (isinstance(t.warmup, float) and 0 <= t.warmup < 1),
        f"train.warmup must be auto or a share of the steps in [0, 1), got {t.warmup!r}",
    )
    _need(
        math.isfinite(t.grad_clip) and t.grad_clip >= 0,
        f"train.grad_clip must be a finite number >= 0 (0 = off), got {t.grad_clip}",
    )


def _validate_evaluate(e: EvaluateConfig) -> None:
    _need(e.steps >= 2, f"evaluate.steps must be >= 2, got {e.steps}")
    _need(e.n_samples >= 0 and e.grid >= 1, "evaluate.n_samples must be >= 0 and grid >= 1")
    _need(e.batch_size >= 2, f"evaluate.batch_size must be >= 2, got {e.batch_size}")


def _validate_mlflow(_: MlflowConfig) -> None:
    """Nothing beyond the types: the tracking URI is checked by reaching it (``tracking``)."""


def _validate_sweep(s: SweepConfig, cfg: Config) -> None:
    """``sweep`` on its own, then each ``sweep.space`` entry against ``cfg``'s ``model`` and
    ``train`` (a sampled value replaces the configured one and that section is re-validated)."""
    _need(s.num_samples >= 1, f"sweep.num_samples must be >= 1, got {s.num_samples}")
    _need(s.max_epochs >= 1, f"sweep.max_epochs must be >= 1, got {s.max_epochs}")
    _need(s.max_concurrent_trials >= 1, "sweep.max_concurrent_trials must be >= 1")
    _need(s.workers_per_trial >= 0, "sweep.workers_per_trial must be >= 0")
    _need(s.objectives in ("single", "pareto"), "sweep.objectives must be single or pareto")
    _need(
        s.search in ("optuna", "random"), f"sweep.search must be optuna or random, got {s.search!r}"
    )
    _need(
        s.scheduler in ("asha", "none"),
        f"sweep.scheduler must be asha or none, got {s.scheduler!r}",
    )
    _need(
        s.metric in SWEEP_METRICS,
        f"sweep.metric {s.metric!r} is unknown; allowed: {', '.join(SWEEP_METRICS)}",
    )
    _need(s.grace_period >= 1, f"sweep.grace_period must be >= 1, got {s.grace_period}")
    for key, spec in s.space.items():
        _check_dimension(cfg, key, spec)


_VALIDATORS: dict[str, Callable[[Any], None]] = {
    "data": _validate_data,
    "model": _validate_model,
    "train": _validate_train,
    "evaluate": _validate_evaluate,
    "mlflow": _validate_mlflow,
}  # sweep: _validate_sweep, which needs the whole config


def _section_kinds(section: str) -> dict[str, Any]:
    return typing.get_type_hints(typing.get_type_hints(Config)[section])


def _check_dimension(cfg: Config, key: str, spec: Any) -> None:
    """One ``sweep.space`` entry: a tunable key, a known distribution, values that are valid."""
    where = f"sweep.space.{key}"
    section, _, name = key.partition(".")
    kinds = _section_kinds(section) if section in TUNABLE_SECTIONS else {}
    if name not in kinds or key in UNTUNABLE:
        tunable = [
            f"{s}.{k}"
            for s in TUNABLE_SECTIONS
            for k in _section_kinds(s)
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
        floats = kind is float or (
            isinstance(kind, types.UnionType) and float in typing.get_args(kind)
        )
        numeric = floats or (kind is int and dist == "randint")
        if not numeric or len(values) != 2:
            raise ConfigError(
                f"{where}.{dist} needs [low, high] bounds on a "
                f"{'float' if dist != 'randint' else 'integer'} key ({key} is {_noun(kind)})"
            )
        low, high = (_check_value(f"{where}.{dist}", v, kind) for v in values)
        if not low <= high or (dist == "loguniform" and low <= 0):
            raise ConfigError(
                f"{where}.{dist}: bounds must satisfy 0 < low <= high for loguniform "
                f"and low <= high otherwise, got {values}"
            )
        values = [low, high]
    for v in values:
        v = _check_value(f"{where}.{dist}", v, kind)
        try:
            _VALIDATORS[section](dataclasses.replace(getattr(cfg, section), **{name: v}))
        except ConfigError as err:
            raise ConfigError(f"{where}: value {v!r} is invalid: {err}") from None


def apply_trial(cfg: Config, trial: dict[str, Any]) -> Config:
    """``cfg`` with a trial's ``{"model.rank": 8, ...}`` values put in their sections."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in trial.items():
        section, _, name = key.partition(".")
        kind = _section_kinds(section)[name]
        # a key of a number or auto: checked as params.yaml is (a union type cannot convert)
        union = isinstance(kind, types.UnionType)
        changes.setdefault(section, {})[name] = (
            _check_value(key, value, kind) if union else kind(value)
        )
    return dataclasses.replace(
        cfg, **{sec: dataclasses.replace(getattr(cfg, sec), **kv) for sec, kv in changes.items()}
    )


def _wanted(sections: str | Iterable[str] | None) -> tuple[str, ...]:
    """The sections to load, checked, in params.yaml's order (``None``: all of them)."""
    if sections is None:
        return SECTIONS
    asked = {sections} if isinstance(sections, str) else set(sections)
    unknown = sorted(asked - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown params section(s) {unknown}; sections are {', '.join(SECTIONS)}")
    if "sweep" in asked and not asked >= set(TUNABLE_SECTIONS):
        raise ValueError(
            f"the sweep section is validated against {' and '.join(TUNABLE_SECTIONS)} "
            "(sweep.space values replace theirs): load those sections too"
        )
    return tuple(s for s in SECTIONS if s in asked)


def parse(raw: Any, sections: str | Iterable[str] | None = None) -> Config:
    """A validated ``Config`` from the parsed YAML mapping.

    ``sections`` (default: all) are the sections a stage reads: only those are parsed and
    validated, so a mistake in another section does not stop it. The others become
    ``UnreadSection`` placeholders that raise when read. An unknown section name is always an
    error.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml must be a mapping of sections (data, model, train, ...)")
    unknown = sorted(set(raw) - set(SECTIONS), key=str)
    if unknown:
        raise ConfigError(
            f"unknown section '{unknown[0]}' in params.yaml; allowed: {', '.join(SECTIONS)}"
        )
    wanted = _wanted(sections)
    kinds = typing.get_type_hints(Config)
    cfg = Config(
        **{
            name: _section(name, kinds[name], raw.get(name))
            if name in wanted
            else UnreadSection(name)
            for name in SECTIONS
        }
    )
    for name in wanted:
        if name == "sweep":
            _validate_sweep(cfg.sweep, cfg)
        else:
            _VALIDATORS[name](getattr(cfg, name))
    return cfg


def load(
    path: str | os.PathLike[str] = PARAMS_FILE, sections: str | Iterable[str] | None = None
) -> Config:
    """Read and validate ``params.yaml`` (only ``sections``, see ``parse``); a missing or
    malformed file is a ``ConfigError``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"params file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        where = " ".join(str(err).split())  # one line: YAML's message spans several
        raise ConfigError(f"{p} is not valid YAML: {where}") from None
    return parse(raw, sections)
