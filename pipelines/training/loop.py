"""The epoch loop: the one training loop of the project (a Ray Train worker runs it for the train
stage, a Tune trial for a sweep).

Each worker reads its batches of the Parquet split (``batches``: the whole split in a
``DataLoader`` sharded by a ``DistributedSampler``, or its own Ray Data shard streamed), trains
the generator under DDP (one ``forward`` computes the whole loss, so every parameter is
synchronised), and reports per-epoch metrics with a checkpoint from rank 0. A restarted worker
group resumes from the latest checkpoint (``FailureConfig``).
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.swa_utils import AveragedModel

from lincore import unchecked
from lincore.generators import OneStepFlowMatching
from lincore.inn import set_recompute
from pipelines import tracking
from pipelines.config import ModelConfig, TrainConfig
from pipelines.data import read_head
from pipelines.errors import LinearizerError
from pipelines.evaluation.quality import NOISE_SEED, SCORE_ROWS, score
from pipelines.faults import hooks
from pipelines.faults import injection as fault_injection
from pipelines.training import batches as batches_mod
from pipelines.training.schedule import EmaWithWarmup, learning_rate
from pipelines.training.session import RayTrainSession, Session

if TYPE_CHECKING:
    from pipelines.model.sampler import OneStepSampler

INIT_ROWS = 256
"""Train rows that initialise ActNorm (image flows): the head of the train split."""
FINITE_CHECK_EVERY = 50
"""Steps between reads of the loss watch (each read waits for the GPU); also at each epoch end."""


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``train.precision`` -> the autocast dtype of the forward pass (``None``: no autocast)."""


class NumericalFault(RuntimeError):
    """Training produced NaN/inf or a network that is no longer invertible in float32."""


RECOMPUTE_FROM = 2**17
"""``train.recompute: auto`` turns it on for the image flow from this many values per worker's
batch (``batch x C x H x W``): 3x64x64 from batch 11, 28x28 from batch 168. Below, the stored
activations fit (under 2 GB) and the third more compute is not worth paying."""


def recomputes(recompute: str, flow: str, values_per_batch: int) -> bool:
    """``train.recompute``: ``auto`` recomputes for the image flow on large batches, whose
    conditioners' hidden activations make a step's memory (2.8 GB at 3x64x64, batch 16, depth 6
    without it)."""
    if recompute != "auto":
        return recompute == "on"
    return flow == "image" and values_per_batch >= RECOMPUTE_FROM


WARMUP_IMAGE = 0.97
"""``train.warmup: auto`` for the image flow: the share of steps that train ``g(.; 1)`` alone
(``OneStepFlowMatching.warmup_terms``). A warm-up step costs about an eighth of a full one, so
this is about 85% of the training time: what measured best on real digits
(``benchmarks/image_quality.py``; 60% of the time, 92% of the steps, did worse)."""


def warmup_share(warmup: float | str, flow: str) -> float:
    """``train.warmup`` as a share of the steps: ``auto`` warms the image flow up only."""
    if warmup == "auto":
        return WARMUP_IMAGE if flow == "image" else 0.0
    return float(warmup)


class MixedPrecision:
    """``train.precision`` on a device: the autocast of the forward pass (the loss) and, for fp16,
    the ``GradScaler``. The networks keep float32 weights; lincore keeps their log-determinants
    and likelihood terms in float32 and the collapse in float64 under autocast."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise LinearizerError(
                f"train.precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {precision!r}"
            )
        if precision == "fp16" and device.type != "cuda":
            raise LinearizerError(
                f"train.precision fp16 needs a CUDA GPU (fp16 autocast and its GradScaler are "
                f"CUDA-only) but this worker runs on {device}: set train.use_gpu: true on a GPU "
                "machine, or use bf16 (CPU too) or fp32"
            )
        self.device_type, self.dtype = device.type, AUTOCAST_DTYPES[precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


class LossWatch:
    """An epoch's loss sum and its first non-finite loss, kept on the device: adding a step's
    loss never waits for the GPU; ``first_bad`` reads it (one sync) every
    ``FINITE_CHECK_EVERY`` steps and at the epoch's end."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = 0

    def add(self, loss: torch.Tensor, step: int) -> None:
        value = loss.detach().to(torch.float64)
        new = ~torch.isfinite(value) & (self.bad_step < 0)
        self.bad_step = torch.where(new, step, self.bad_step)
        self.bad_value = torch.where(new, value, self.bad_value)
        self.total += value
        self.steps += 1

    def first_bad(self) -> tuple[int, float] | None:
        """``(step, loss)`` of the first non-finite loss so far, or ``None``."""
        step = int(self.bad_step)
        return None if step < 0 else (step, float(self.bad_value))

    def mean(self) -> float:
        return float(self.total) / max(self.steps, 1)


def train_step(
    ddp: torch.nn.Module,
    opt: torch.optim.Optimizer,
    amp: MixedPrecision,
    xb: torch.Tensor,
    *,
    lr: float,
    grad_clip: float,
    warmup: bool = False,
) -> torch.Tensor:
    """One optimizer step on a batch already on the device; returns the loss, a device tensor.

    Nothing here waits for the GPU (with fp32 or bf16; fp16's GradScaler reads its inf check
    once per step): lincore's value checks (NaN input, ActNorm initialised), each a host sync,
    are off inside ``unchecked()`` (the data were checked when read, and the loop's
    ``LossWatch`` catches a non-finite loss), and clipping scales on the device."""
    with unchecked(), amp.autocast():
        loss = ddp(xb, warmup=warmup)["loss"]
    opt.zero_grad(set_to_none=True)
    amp.scaler.scale(loss).backward()
    if grad_clip > 0:
        amp.scaler.unscale_(opt)  # fp16: clip the true gradients
        params = [p for group in opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for group in opt.param_groups:
        group["lr"] = lr
    amp.scaler.step(opt)
    amp.scaler.update()
    return loss


def _val_metrics(
    model: Any, xv: torch.Tensor, seed: int, steps: int
) -> tuple[dict[str, float], OneStepSampler]:
    """Validation loss terms with fixed noise (comparable across epochs), and the one-step
    sample quality of ``evaluation.quality.score`` as ``val_mmd``, ``val_swd``, ``val_energy``
    and ``val_inversion_energy``: what a sweep compares (the loss is not comparable across loss
    weights), from the same function that scores a sweep's models.

    Runs ``model`` (the EMA, or the weights being trained) where it is, on its device, with no
    copy: the sampler only collapses it (float64 copies of the operator's factors) and puts it
    in eval mode, which the caller had set already. Also returns that sampler, so that the
    epoch's pictures reuse the collapse instead of computing it twice."""
    from pipelines.model.sampler import OneStepSampler

    devices = [xv.device] if xv.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        out = model(xv)
        values = torch.stack([v.detach().to(torch.float64) for v in out.values()]).tolist()
        terms = {f"val_{k}": v for k, v in zip(out, values, strict=True)}
        sampler = OneStepSampler(model, steps, device=xv.device)
        terms |= {f"val_{k}": v for k, v in score(sampler, xv).items()}
    return terms, sampler


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry point: ``fit_epochs`` in a Ray Train worker (a process of its own, so
    it installs the fault hooks ``LINEARIZER_FAULT`` asks for)."""
    from ray.train.v2._internal.execution import context as train_context

    fault_injection.install()

    # per-report INFO lines drown ours; that module logs under its file path, not "ray.train"
    for name in ("ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    local = int(config["train"].get("num_workers", 1)) == 0  # Ray Train's local mode
    fit_epochs(config, RayTrainSession(local_mode=local))


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
    threads = getattr(session, "cpu_threads", None)  # this worker's own share of its node
    if threads:
        torch.set_num_threads(threads)
    amp = MixedPrecision(train_cfg.precision, device)
    # heads only: a worker never holds a split for these (the train batches: ``batches``)
    x_init, _, meta = read_head(config["train_path"], INIT_ROWS)
    xv, _, _ = read_head(config["val_path"], SCORE_ROWS)
    shape = tuple(meta["shape"])
    model = OneStepFlowMatching.build(shape, model_cfg, seed=train_cfg.seed, steps=sampler_steps)
    xv_t = torch.from_numpy(xv)
    model.initialize_from(torch.from_numpy(x_init))  # ActNorm; overwritten by a resumed state
    per_worker = max(1, train_cfg.batch_size // max(world, 1))
    set_recompute(
        model, recomputes(train_cfg.recompute, model_cfg.flow, per_worker * math.prod(shape))
    )
    start, history = 0, []
    resumed = session.latest_state()
    if resumed is not None:
        try:
            model.load_state_dict(resumed["model"])
        except RuntimeError:
            raise LinearizerError(
                "the checkpoint to resume holds another model (written before model.operator "
                "existed, or with other model.* values): resume with the params it was trained "
                "with (model.operator: low_rank, model.w_one_step_likelihood: 0 for old runs; "
                "model.two_networks: false, train.warmup: 0 for image-flow runs before the "
                "warm start)"
            ) from None
        start, history = int(resumed["epoch"]) + 1, list(resumed["history"])
    warm_share = warmup_share(train_cfg.warmup, model_cfg.flow)
    # on its device, in DDP where there are several workers
    ddp = session.wrap_model(model, find_unused=warm_share > 0)
    batches = batches_mod.open_batches(config, session, per_worker)  # the driver's loader
    total_steps = epochs * batches.steps
    warm_steps = min(round(warm_share * total_steps), total_steps - 1) if warm_share else 0
    if rank == 0:
        print(f"train loader: {config.get('loader', 'memory')}, {batches.steps} steps/epoch")
        if warm_steps:
            print(
                f"warm-up: g(.; 1) alone, as a plain flow, for the first {warm_steps} of "
                f"{total_steps} steps (train.warmup {train_cfg.warmup})"
            )
    raw = getattr(ddp, "module", ddp)
    dtype = next(raw.parameters()).dtype  # batches follow the prepared model
    # the optimizer and its resumed state after prepare: Adam's moments land on the
    # parameters' device and dtype (load_state_dict casts to them)
    opt = torch.optim.Adam(raw.parameters(), lr=train_cfg.lr)
    if resumed is not None:
        opt.load_state_dict(resumed["optimizer"])
        if amp.scaler.is_enabled() and "scaler" in resumed:
            amp.scaler.load_state_dict(resumed["scaler"])
    num_params = sum(p.numel() for p in raw.parameters())
    # the EMA of the weights is what validation, evaluation and the saved model use: it is the
    # flow-matching standard for sample quality and steadies the metric sweeps compare. Its
    # copy lives on the device, its count (n_averaged) on the CPU; the averager updates it
    # without reading either on the host
    ema = None
    if train_cfg.ema_decay > 0:
        averager = EmaWithWarmup(train_cfg.ema_decay)
        ema = AveragedModel(raw, multi_avg_fn=averager)
        if resumed is not None and "ema_state" in resumed:
            ema.load_state_dict(resumed["ema_state"])
            averager.resume(ema)
    evaluated = raw if ema is None else ema.module
    xv_t = xv_t.to(device, dtype)
    live = tracking.LiveRun.from_config(config, train_cfg.image_every) if rank == 0 else None
    for epoch in range(start, epochs):
        # each epoch's randomness (noise, shuffle) is a function of (seed, rank, epoch): a run
        # resumed from a checkpoint retraces exactly the epochs an undisturbed run would train
        torch.manual_seed(batches_mod.epoch_seed(train_cfg.seed, rank, epoch))
        ddp.train()
        watch, t0 = LossWatch(device), time.perf_counter()
        for step, (xb,) in enumerate(batches.epoch(epoch)):
            xb = xb.to(device, dtype, non_blocking=device.type == "cuda")
            lr = learning_rate(train_cfg, epoch, step, batches.steps, epochs, restart=warm_steps)
            warm = epoch * batches.steps + step < warm_steps
            loss = train_step(ddp, opt, amp, xb, lr=lr, grad_clip=train_cfg.grad_clip, warmup=warm)
            if ema is not None:
                averager.update_parameters(ema, raw)  # not ema.update_parameters: 2 syncs
            watch.add(loss, step)
            if (step + 1) % FINITE_CHECK_EVERY == 0:
                _check_loss(watch, epoch, train_cfg)
        _check_loss(watch, epoch, train_cfg)
        finite = torch.stack([torch.isfinite(p).all() for p in raw.parameters()]).all()
        if not bool(finite):
            raise NumericalFault(f"parameters became NaN/inf in epoch {epoch}: lower train.lr")
        raw.eval()
        evaluated.eval()
        val, val_sampler = _val_metrics(evaluated, xv_t, seed=NOISE_SEED, steps=sampler_steps)
        metrics = {
            "epoch": epoch,
            "train_loss": watch.mean(),
            **val,
            "roundtrip_error": raw.roundtrip_error(xv_t),  # the weights being trained
            "num_params": num_params,
            "epoch_seconds": time.perf_counter() - t0,
            "peak_rss_mib": peak_rss_mib(),  # this worker's
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
            if amp.scaler.is_enabled():
                state["scaler"] = amp.scaler.state_dict()
        session.report(metrics, state)
        for hook in hooks.EPOCH_END:
            hook(epoch)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss``: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _check_loss(watch: LossWatch, epoch: int, train_cfg: TrainConfig) -> None:
    """Stop on the first non-finite loss the watch saw (NaN/inf in the loss or inside the
    networks), naming its epoch and step."""
    bad = watch.first_bad()
    if bad is not None:
        step, value = bad
        raise NumericalFault(
            f"loss is {value} at epoch {epoch}, step {step}: lower train.lr "
            f"(now {train_cfg.lr}) or raise model.w_data_reconstruction"
        )
