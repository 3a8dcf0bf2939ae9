"""The Ray Train loop (one per worker) and the driver call that runs it.

Each worker reads the Parquet split, shards it with a ``DistributedSampler`` (through
``prepare_data_loader``), trains the generator under DDP (one ``forward`` computes the whole
loss, so every parameter is synchronised), and reports per-epoch metrics with a checkpoint from
rank 0. A restarted worker group resumes from the latest checkpoint (``FailureConfig``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, TensorDataset

from lincore.metrics import mmd, typicality
from pipelines import tracking
from pipelines.checkpoint import build_model
from pipelines.config import Config, ModelConfig, TrainConfig, output_path
from pipelines.data import read_split
from pipelines.errors import LinearizerError
from pipelines.faults import maybe_fail

if TYPE_CHECKING:
    from pipelines.sampler import OneStepSampler

STATE_FILE = "state.pt"


class NumericalFault(RuntimeError):
    """Training produced NaN/inf or a network that is no longer invertible in float32."""


def _val_metrics(
    model: Any, xv: torch.Tensor, seed: int, steps: int
) -> tuple[dict[str, float], OneStepSampler]:
    """Validation loss terms with fixed noise (comparable across epochs), ``val_mmd`` (one-step
    samples against validation data: the quality a sweep compares; the loss is not comparable
    across loss weights) and ``val_inversion_energy`` (median ``|e|^2 / D`` of validation data
    inverted to noise: about 1 when the generator covers the data).

    Also returns the sampler it collapsed (a CPU copy of ``model``), so that the epoch's
    pictures reuse the collapse instead of computing it twice."""
    from pipelines.sampler import OneStepSampler

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    with torch.no_grad():
        terms = {f"val_{k}": float(v) for k, v in model(xv).items()}
        ref = xv.cpu()
        sampler = OneStepSampler(copy.deepcopy(model).cpu(), steps)
        terms["val_mmd"] = mmd(sampler.sample(len(ref), seed=seed), ref)
        noise = sampler.model.invert(ref, sampler.collapsed)
        terms["val_inversion_energy"] = typicality(noise)["median_energy"]
    torch.random.set_rng_state(state)
    return terms, sampler


class EmaWithWarmup:
    """``multi_avg_fn`` for ``AveragedModel``: an EMA whose decay ramps up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that a short run's average is not
    dominated by its first, untrained weights (torch's ``get_ema_multi_avg_fn`` has no warm-up).
    ``n`` is counted here, on the host: reading ``AveragedModel.n_averaged`` would sync a GPU
    every step."""

    def __init__(self, decay: float, updates: int = 0) -> None:
        self.decay, self.updates = decay, updates

    @torch.no_grad()
    def __call__(self, ema: list[torch.Tensor], current: list[torch.Tensor], _: Any) -> None:
        n = self.updates
        torch._foreach_lerp_(ema, current, 1 - min(self.decay, (1 + n) / (10 + n)))
        self.updates += 1


def final_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights a training state hands on (evaluation, the saved and registered model): the
    EMA of the weights when the run kept one (``AveragedModel``'s state, ``module.`` prefixed),
    else the raw weights."""
    if "ema_state" not in state:
        return state["model"]
    prefix = "module."
    return {k[len(prefix) :]: v for k, v in state["ema_state"].items() if k.startswith(prefix)}


class Session(Protocol):
    """Where the epoch loop runs: a Ray Train worker, or a Ray Tune trial process (sweeps)."""

    world: int
    rank: int
    device: torch.device

    def latest_state(self) -> dict[str, Any] | None: ...
    def prepare(self, loader: DataLoader, model: torch.nn.Module) -> tuple[Any, Any]: ...
    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None: ...


def save_state(state: dict[str, Any], folder: str | Path) -> None:
    torch.save(state, Path(folder) / STATE_FILE)


def load_state_dir(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def checkpoint_state(ckpt: Any) -> dict[str, Any] | None:
    """The training state inside a Ray Train or Tune ``Checkpoint`` (``None`` for none)."""
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return load_state_dir(d)


class RayTrainSession:
    """Ray Train worker: DDP through ``prepare_*``, checkpoints reported by rank 0."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.world, self.rank = ctx.get_world_size(), ctx.get_world_rank()
        self.device = ray.train.torch.get_device()

    def latest_state(self) -> dict[str, Any] | None:
        import ray.train

        return checkpoint_state(ray.train.get_checkpoint())

    def prepare(self, loader: DataLoader, model: torch.nn.Module) -> tuple[Any, Any]:
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader), ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if state is not None:
                save_state(state, tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)  # every rank reports


def learning_rate(cfg: TrainConfig, epoch: int, step: int, steps: int, epochs: int) -> float:
    """The step's learning rate: cosine from ``lr`` to 0 over the run, or constant. A function
    of the position alone (no scheduler state), so a resumed run continues the same curve."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (epoch * steps + step) / max(epochs * steps, 1)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point: ``fit_epochs`` in a Ray Train worker."""
    from ray.train.v2._internal.execution import context as train_context

    # per-report INFO lines drown ours; that module logs under its file path, not "ray.train"
    for name in ("ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    fit_epochs(config, RayTrainSession())


def fit_epochs(config: dict[str, Any], session: Session) -> None:
    """Train for ``config["epochs"]`` epochs from the session's latest state, reporting each.

    The one training loop of the project: the train stage and every sweep trial run it. With
    ``config["mlflow"]`` (the train stage), rank 0 also logs each epoch to that MLflow run as it
    ends (``tracking.LiveRun``), before the epoch's checkpoint: an epoch retrained after an
    interruption was then logged already and is skipped, never missing.
    """
    model_cfg, train_cfg = ModelConfig(**config["model"]), TrainConfig(**config["train"])
    epochs = int(config.get("epochs") or train_cfg.epochs)
    sampler_steps = int(config.get("steps") or 100)  # T of the collapsed sampler (val_mmd)
    world, rank, device = session.world, session.rank, session.device
    if world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or world) // world))
    x, _, meta = read_split(config["train_path"])
    xv, _, _ = read_split(config["val_path"])
    shape = tuple(meta["shape"])
    model = build_model(model_cfg, shape, seed=train_cfg.seed, steps=sampler_steps)
    x_t, xv_t = torch.from_numpy(x), torch.from_numpy(xv[:512])
    model.initialize_from(x_t[:256])  # ActNorm (image flows); overwritten by a resumed state
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
    start, history = 0, []
    resumed = session.latest_state()
    if resumed is not None:
        try:
            model.load_state_dict(resumed["model"])
        except RuntimeError:
            raise LinearizerError(
                "the checkpoint to resume holds another model (written before model.operator "
                "existed, or with other model.* values): resume with the params it was trained "
                "with (model.operator: low_rank, model.w_one_step_likelihood: 0 for old runs)"
            ) from None
        opt.load_state_dict(resumed["optimizer"])
        start, history = int(resumed["epoch"]) + 1, list(resumed["history"])
    per_worker = max(1, train_cfg.batch_size // max(world, 1))
    loader = DataLoader(
        TensorDataset(x_t), batch_size=per_worker, shuffle=True, drop_last=len(x) > per_worker
    )
    loader, ddp = session.prepare(loader, model)
    raw = getattr(ddp, "module", ddp)
    num_params = sum(p.numel() for p in raw.parameters())
    # the EMA of the weights is what validation, evaluation and the saved model use: it is the
    # flow-matching standard for sample quality and steadies the metric sweeps compare
    ema = None
    if train_cfg.ema_decay > 0:
        averager = EmaWithWarmup(train_cfg.ema_decay)
        ema = AveragedModel(raw, multi_avg_fn=averager)
        if resumed is not None and "ema_state" in resumed:
            ema.load_state_dict(resumed["ema_state"])
            averager.updates = int(ema.n_averaged) - 1  # the first update only copied
    evaluated = raw if ema is None else ema.module
    xv_t = xv_t.to(device)
    live = tracking.LiveRun.from_config(config, train_cfg.image_every) if rank == 0 else None
    for epoch in range(start, epochs):
        if world > 1 and hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        # each epoch's randomness is a function of (seed, rank, epoch): a run resumed from a
        # checkpoint retraces exactly the epochs an undisturbed run would have trained
        torch.manual_seed(train_cfg.seed + rank + 1_000_003 * epoch)
        ddp.train()
        total, batches, t0 = 0.0, 0, time.perf_counter()
        for step, (xb,) in enumerate(loader):
            try:
                loss = ddp(xb.to(device))["loss"]
            except ValueError as err:  # a network's own finiteness check fired
                if "NaN or inf" not in str(err):
                    raise
                raise NumericalFault(
                    f"NaN/inf inside the networks at epoch {epoch}, step {step} ({err}): lower "
                    f"train.lr (now {train_cfg.lr})"
                ) from None
            if not torch.isfinite(loss):
                raise NumericalFault(
                    f"loss is {loss.item()} at epoch {epoch}, step {step}: lower train.lr "
                    f"(now {train_cfg.lr}) or raise model.w_data_reconstruction"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:
                group["lr"] = learning_rate(train_cfg, epoch, step, len(loader), epochs)
            opt.step()
            if ema is not None:
                ema.update_parameters(raw)
            total, batches = total + loss.item(), batches + 1
        if not all(bool(torch.isfinite(p).all()) for p in raw.parameters()):
            raise NumericalFault(f"parameters became NaN/inf in epoch {epoch}: lower train.lr")
        raw.eval()
        evaluated.eval()
        val, val_sampler = _val_metrics(evaluated, xv_t, seed=1234, steps=sampler_steps)
        metrics = {
            "epoch": epoch,
            "train_loss": total / max(batches, 1),
            **val,
            "roundtrip_error": raw.roundtrip_error(xv_t),  # the weights being trained
            "num_params": num_params,
            "epoch_seconds": time.perf_counter() - t0,
        }
        if metrics["roundtrip_error"] > train_cfg.max_roundtrip_error:
            raise NumericalFault(
                f"g is no longer invertible in float32 at epoch {epoch}: max|g^-1(g(x)) - x| = "
                f"{metrics['roundtrip_error']:.3g} > train.max_roundtrip_error "
                f"({train_cfg.max_roundtrip_error}); lower train.lr or model.depth"
            )
        history.append(metrics)
        if rank == 0:
            print(
                f"epoch {epoch + 1}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
                f"val_loss {metrics['val_loss']:.4f}  val_mmd {metrics['val_mmd']:.4f}  "
                f"roundtrip {metrics['roundtrip_error']:.1e}",
                flush=True,
            )
        if live is not None:
            live.epoch_end(metrics, val_sampler, xv_t)
        state = None
        if rank == 0:
            state = {"model": raw.state_dict(), "optimizer": opt.state_dict(),
                     "epoch": epoch, "history": history}  # fmt: skip
            if ema is not None:
                state["ema_state"] = ema.state_dict()
        session.report(metrics, state)
        maybe_fail("epoch", epoch)


def unique_run_name(prefix: str = "train") -> str:
    """A fresh Ray run name: a reused one would silently resume an old run (STACK.md §9.3)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def loop_config(
    cfg: Config,
    train_path: Path,
    val_path: Path,
    *,
    epochs: int | None = None,
    mlflow_run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``fit_epochs`` needs, as plain data (it crosses process boundaries). ``mlflow_run``
    (``{"tracking_uri", "run_id", "grid"}``) is the run rank 0 logs each epoch to."""
    config = {
        "model": dataclasses.asdict(cfg.model),
        "train": dataclasses.asdict(cfg.train),
        "epochs": epochs,
        "steps": cfg.evaluate.steps,
        "train_path": str(train_path),
        "val_path": str(val_path),
    }
    if mlflow_run is not None:
        config["mlflow"] = mlflow_run
    return config


def run(
    cfg: Config,
    train_path: Path,
    val_path: Path,
    *,
    run_name: str,
    epochs: int | None = None,
    num_workers: int | None = None,
    callbacks: list[Any] | None = None,
    mlflow_run: dict[str, Any] | None = None,
) -> Any:
    """Fit with a ``TorchTrainer``; returns the ``ray.train.Result``. Ray must be initialised.

    ``mlflow_run`` (see ``loop_config``): the MLflow run rank 0 logs every epoch to."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    workers = t.num_workers if num_workers is None else num_workers
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(
            cfg, train_path, val_path, epochs=epochs, mlflow_run=mlflow_run
        ),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=t.use_gpu),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(output_path(t.storage_path, "train.storage_path")),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            callbacks=callbacks,
        ),
    )
    try:
        return trainer.fit()
    except Exception as err:  # Ray wraps worker errors; surface the root cause in one line
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        text = str(cause).strip().splitlines()
        message = next((ln for ln in reversed(text) if "NumericalFault" in ln), None)
        raise LinearizerError(
            f"training run {run_name} failed: {message or (text[-1] if text else repr(cause))}"
        ) from None


def load_result_state(result: Any) -> dict[str, Any]:
    """The rank-0 state of the latest checkpoint: weights (``model``, and ``ema_state`` when an
    EMA is kept; ``final_weights`` picks), optimizer, ``history`` per epoch."""
    state = checkpoint_state(result.checkpoint)
    if state is None:
        raise LinearizerError("the training run finished without a checkpoint")
    return state
