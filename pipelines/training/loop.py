"""The epoch loop: the one training loop of the project (a Ray Train worker runs it for the train
stage, a Tune trial for a sweep).

Each worker reads the Parquet split, shards it with a ``DistributedSampler`` (through
``prepare_data_loader``), trains the generator under DDP (one ``forward`` computes the whole
loss, so every parameter is synchronised), and reports per-epoch metrics with a checkpoint from
rank 0. A restarted worker group resumes from the latest checkpoint (``FailureConfig``).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, TensorDataset

from lincore.generators import OneStepFlowMatching
from lincore.metrics import mmd, typicality
from pipelines.common import fault_injection, hooks, tracking
from pipelines.common.config import ModelConfig, TrainConfig
from pipelines.common.data import read_split
from pipelines.common.errors import LinearizerError
from pipelines.training.schedule import EmaWithWarmup, learning_rate
from pipelines.training.session import RayTrainSession, Session

if TYPE_CHECKING:
    from pipelines.common.one_step_sampler import OneStepSampler


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
    from pipelines.common.one_step_sampler import OneStepSampler

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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point: ``fit_epochs`` in a Ray Train worker (a process of its own, so
    it installs the fault hooks ``LINEARIZER_FAULT`` asks for)."""
    from ray.train.v2._internal.execution import context as train_context

    fault_injection.install()

    # per-report INFO lines drown ours; that module logs under its file path, not "ray.train"
    for name in ("ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    fit_epochs(config, RayTrainSession())


def fit_epochs(config: dict[str, Any], session: Session) -> None:
    """Train for ``config["epochs"]`` epochs from the session's latest state, reporting each.

    The one training loop of the project: the train stage and every sweep trial run it. With
    ``config["mlflow"]`` (the train stage), rank 0 also logs each epoch to that MLflow run as it
    ends (``tracking.LiveRun``), before the epoch's checkpoint: an epoch retrained after an
    interruption was then logged already and is skipped, never missing. After each epoch's
    report it calls the ``hooks.EPOCH_END`` hooks (the fault tests' seam).
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
    model = OneStepFlowMatching.build(shape, model_cfg, seed=train_cfg.seed, steps=sampler_steps)
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
            state = {
                "model": raw.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "history": history,
            }
            if ema is not None:
                state["ema_state"] = ema.state_dict()
        session.report(metrics, state)
        for hook in hooks.EPOCH_END:
            hook(epoch)
