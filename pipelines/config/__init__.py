"""``params.yaml``: the schema (``schema``), reading and validating it (``loading``), the
paths it names and the stages' default paths (``paths``), and the rank rule (``rank``)."""

from pipelines.config.loading import apply_trial, load, parse
from pipelines.config.paths import (
    METRICS,
    MODELS,
    PARAMS_FILE,
    PLOTS,
    PREPARED,
    RAW_DATA,
    ROOT,
    SOURCE_FOLDERS,
    SWEEP_RESULTS,
    output_path,
    project_root,
    resolve,
)
from pipelines.config.rank import check_rank
from pipelines.config.schema import (
    DATASETS,
    SECTIONS,
    Config,
    DataConfig,
    EvaluateConfig,
    MlflowConfig,
    ModelConfig,
    SweepConfig,
    TrainConfig,
    UnreadSection,
    UnreadSectionError,
)

__all__ = [
    "DATASETS",
    "METRICS",
    "MODELS",
    "PARAMS_FILE",
    "PLOTS",
    "PREPARED",
    "RAW_DATA",
    "ROOT",
    "SECTIONS",
    "SOURCE_FOLDERS",
    "SWEEP_RESULTS",
    "Config",
    "DataConfig",
    "EvaluateConfig",
    "MlflowConfig",
    "ModelConfig",
    "SweepConfig",
    "TrainConfig",
    "UnreadSection",
    "UnreadSectionError",
    "apply_trial",
    "check_rank",
    "load",
    "output_path",
    "parse",
    "project_root",
    "resolve",
]
