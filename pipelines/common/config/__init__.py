"""``params.yaml``: the schema (``schema``), reading and validating it (``loading``), and the
paths it names (``paths``)."""

from pipelines.common.config.loading import apply_trial, load, parse
from pipelines.common.config.paths import ROOT, SOURCE_FOLDERS, output_path, project_root, resolve
from pipelines.common.config.schema import (
    DATASETS,
    Config,
    DataConfig,
    EvaluateConfig,
    MlflowConfig,
    ModelConfig,
    SweepConfig,
    TrainConfig,
)

__all__ = [
    "DATASETS",
    "ROOT",
    "SOURCE_FOLDERS",
    "Config",
    "DataConfig",
    "EvaluateConfig",
    "MlflowConfig",
    "ModelConfig",
    "SweepConfig",
    "TrainConfig",
    "apply_trial",
    "load",
    "output_path",
    "parse",
    "project_root",
    "resolve",
]
