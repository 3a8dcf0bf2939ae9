"""The schema of ``params.yaml``: one frozen dataclass per section, with every default.

``model`` is ``lincore.generators.OneStepConfig`` itself, so the model's defaults have one source.
A stage loads only the sections it reads (``load(path, sections=...)``); the others are
``UnreadSection`` placeholders that refuse to be read, never silent defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NoReturn

from lincore.generators import OneStepConfig
from pipelines.config.paths import RAW_DATA
from pipelines.errors import ConfigError

DATASETS = ("digits", "moons", "checkerboard", "eight_gaussians", "spirals", "path")
RECOMPUTE = ("auto", "on", "off")
"""``train.recompute``: recompute activations in the backward pass (auto: large image batches)."""
PRECISIONS = ("fp32", "bf16", "fp16")
"""``train.precision``: the dtype autocast gives the forward pass (fp32: no autocast)."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    """digits | moons | checkerboard | eight_gaussians | spirals | path"""
    path: str = RAW_DATA
    """for name=path: a local .npz, .parquet, MNIST IDX file, or a folder of images. Read only
    when name is path, but the prepare stage depends on it in dvc.yaml whatever the name, so
    params.yaml must name an existing file or folder (default: ``data/raw``, which is in git)"""
    n_samples: int = 20000
    """number of points generated for the 2-D toys"""
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    image_size: int = 0
    """for an image folder: centre-crop to a square, then resize to this size (0 keeps the
    images as they are; they must then share one size)"""
    channels: int = 0
    """for an image folder: 1 (grey) or 3 (RGB) converts every image; 0 keeps the files' own
    channel count (grey stays 1 channel), which must then be the same for all"""
    layout: str = "auto"
    """for an .npz of images: auto (channels-last when the last axis is 1, 3 or 4 and the
    second is not) | nchw | nhwc"""
    seed: int = 0


ModelConfig = OneStepConfig
"""``model``: lincore's own config of the standard model (one source for its defaults)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.002
    lr_schedule: str = "cosine"
    """cosine (to 0 over the run; a pure function of the step, so resumes match) | constant"""
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
    ema_decay: float = 0.99
    """exponential moving average of the weights, per step (0 = off): what val_mmd, evaluation
    and the saved model use"""
    image_every: int = 5
    """log a sample grid (and, for images, an interpolation strip) to the train stage's MLflow
    run every this many epochs while it trains (0 = off)"""
    precision: str = "fp32"
    """fp32 | bf16 (autocast to bfloat16: CPU or GPU) | fp16 (autocast to float16 with a
    GradScaler: CUDA only, needs use_gpu). Weights stay float32; lincore keeps log-determinants
    and likelihood terms in float32 and the sampler's collapse in float64"""
    loader: str = "auto"
    """how workers read the train split: memory (each worker reads the split, a torch
    DataLoader shards it) | ray_data (ray.data.read_parquet, each worker streams its shard:
    memory flat in the data set's size, the same code on shared storage) | auto (ray_data for
    a large split, memory for a small one; see pipelines.training.batches)"""
    recompute: str = "auto"
    """auto (the image flow, from 2^17 values per worker batch) | on | off: keep only each
    block's input for the backward pass and recompute the rest there (torch.utils.checkpoint),
    so a step's memory hardly grows with depth, for about a third more compute"""
    warmup: float | str = "auto"
    """share of the training steps (0 to below 1) that train g(.; 1) alone as a plain flow, by
    its likelihood (one pass of g per step instead of seven), before the full objective: auto
    is 0.97 for the image flow, whose one-step samples need a Gaussianising g(.; 1)
    first, and 0 (off) for the coupling flow"""
    grad_clip: float = 10.0
    """largest global gradient norm per step (torch.nn.utils.clip_grad_norm_, after unscaling
    with fp16); 0 = off. The default digits run's norms peak at 8 (median 1.4), so 10 only
    catches spikes and leaves that run unchanged"""


@dataclass(frozen=True)
class EvaluateConfig:
    steps: int = 100
    """sampler steps T collapsed into one matrix"""
    n_samples: int = 0
    """samples drawn for the quality metrics, and test rows they are compared with (0: the
    test split, at most 10,000): a fixed number, so evaluation's cost and memory do not grow
    with the test set"""
    batch_size: int = 500
    """rows per batch of the evaluation's passes (sampling, inversion, likelihood, kernel
    blocks): bounds its peak memory"""
    grid: int = 64


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    """overridden by the MLFLOW_TRACKING_URI environment variable"""
    experiment: str = "linearizer"
    artifact_location: str = "mlartifacts"


DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
SWEEP_METRICS = ("val_mmd", "val_loss")  # both minimised
TUNABLE_SECTIONS = ("model", "train")
UNTUNABLE = frozenset(
    f"train.{k}"
    for k in (
        "epochs",
        "num_workers",
        "use_gpu",
        "storage_path",
        "checkpoints_to_keep",
        "max_failures",
        "max_roundtrip_error",
        "image_every",
        "precision",
    )
)


def _default_space() -> dict[str, dict[str, list]]:
    return {
        "model.rank": {"choice": [2, 4, 8, 16, 32]},
        "model.depth": {"choice": [2, 4, 6]},
        "model.hidden": {"choice": [64, 128]},
        "train.lr": {"loguniform": [0.0005, 0.005]},
        "model.w_data_likelihood": {"uniform": [0.0, 1.0]},
    }


@dataclass(frozen=True)
class SweepConfig:
    num_samples: int = 4
    max_epochs: int = 6
    max_concurrent_trials: int = 2
    workers_per_trial: int = 0
    """Ray Train workers per trial; 0 trains inside the trial process (fastest on a laptop)"""
    metric: str = "val_mmd"
    objectives: str = "single"
    """single | pareto (one-step MMD vs parameter count)"""
    search: str = "optuna"
    """optuna (TPE, or NSGA-II for pareto) | random"""
    scheduler: str = "asha"
    """asha | none"""
    grace_period: int = 1
    space: dict[str, Any] = field(default_factory=_default_space)
    """``section.key: {distribution: [values or bounds]}``"""
    registry_name: str = "linearizer-one-step"
    study_storage: str = ""
    """Optuna storage of the sweep's study (named after the sweep): "" = SQLite in the sweep's
    results folder (``optuna.db``); an RDB URL (``postgresql://...``) for a team"""
    seed: int = 0


class UnreadSectionError(ConfigError):
    """A stage read a section of ``params.yaml`` it did not load (a bug in that stage)."""


class UnreadSection:
    """Stands in for a section the stage did not load: reading any of its keys raises
    ``UnreadSectionError``, so a stage cannot silently run on defaults instead of params.yaml.
    (Private and dunder names raise ``AttributeError`` as usual: pickling and copying work.)"""

    __slots__ = ("_unread_section",)

    def __init__(self, section: str) -> None:
        object.__setattr__(self, "_unread_section", section)

    def __getattr__(self, key: str) -> NoReturn:
        if key.startswith("_"):
            raise AttributeError(key)
        section = self._unread_section
        raise UnreadSectionError(
            f"{section}.{key} was read, but this stage did not load the '{section}' section of "
            f"params.yaml: add '{section}' to the stage's SECTIONS (and to its params in dvc.yaml)"
        )

    def __setattr__(self, key: str, value: Any) -> NoReturn:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {key!r}")

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return UnreadSection, (self._unread_section,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnreadSection) and other._unread_section == self._unread_section

    def __hash__(self) -> int:
        return hash((UnreadSection, self._unread_section))

    def __repr__(self) -> str:
        return f"UnreadSection({self._unread_section!r})"


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def loaded_sections(self) -> tuple[str, ...]:
        """The sections read from params.yaml (the others are ``UnreadSection``)."""
        return tuple(
            f.name
            for f in dataclasses.fields(self)
            if not isinstance(getattr(self, f.name), UnreadSection)
        )

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"model.rank": 16, ...}``: the form MLflow params take (loaded sections only)."""
        return {
            f"{name}.{f.name}": getattr(getattr(self, name), f.name)
            for name in self.loaded_sections
            for f in dataclasses.fields(getattr(self, name))
        }


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
"""Every section of params.yaml, in order."""
