"""The GPU paths, on a machine with CUDA (every test here is skipped, saying why, without one):
a resumed run keeps the model, its batches, Adam's state and the EMA on the GPU; sampling and
evaluation on the GPU equal the CPU's for the same noise; a training step never waits for the
GPU; bf16 and fp16 steps are finite and close to fp32; two NCCL workers of Ray Train keep
identical replicas (needs 2 GPUs).

    pytest tests/test_gpu.py -v        # on a GPU machine (CI without a GPU skips them all)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import in_process_ray
from test_devices import SMALL, far_model
from test_faults import FakeSession, moons_config

from pipelines.config import parse
from pipelines.data import read_split
from pipelines.evaluation.trained import evaluate
from pipelines.model import checkpoints
from pipelines.model.sampler import OneStepSampler
from pipelines.training.driver import loop_config
from pipelines.training.loop import LossWatch, MixedPrecision, fit_epochs, train_step
from pipelines.training.schedule import EmaWithWarmup
from pipelines.training.session import RayTrainSession

CUDA = torch.cuda.is_available()
TWO_GPUS = CUDA and torch.cuda.device_count() >= 2
NO_CUDA = "needs CUDA: torch.cuda.is_available() is False on this machine"


def on_cpu(tree: Any) -> Any:
    """A training state as a checkpoint gives it back (``map_location="cpu"``)."""
    return torch.utils._pytree.tree_map(
        lambda v: v.cpu() if isinstance(v, torch.Tensor) else v, tree
    )


class CudaSession(FakeSession):
    """``FakeSession`` on the GPU: ``wrap_model`` moves the model there, as Ray's ``prepare_model``
    does, and records the device of every batch the model trains on."""

    device = torch.device("cuda", 0)

    def wrap_model(self, model: torch.nn.Module, *, find_unused: bool = False) -> torch.nn.Module:
        self.model, self.batch_devices = model, set()

        def record(_: Any, args: tuple) -> None:
            if torch.is_grad_enabled():
                self.batch_devices.add(args[0].device)

        model.register_forward_pre_hook(record)
        return model.to(self.device)


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_a_resumed_run_keeps_model_batches_optimizer_and_ema_on_the_gpu(moons):
    first = CudaSession()
    fit_epochs(moons_config(moons, 1), first)
    resumed = CudaSession(on_cpu(first.state))  # as read back from a checkpoint
    fit_epochs(moons_config(moons, 2), resumed)
    assert [r["epoch"] for r in resumed.reports] == [1]
    assert resumed.batch_devices == {torch.device("cuda", 0)}
    assert all(p.is_cuda for p in resumed.model.parameters())
    state = resumed.state
    moments = [
        s[k] for s in state["optimizer"]["state"].values() for k in ("exp_avg", "exp_avg_sq")
    ]
    assert moments and all(m.is_cuda for m in moments)  # restored after prepare, on the GPU
    ema = {k: v for k, v in state["ema_state"].items() if k != "n_averaged"}
    assert all(v.is_cuda for v in ema.values())
    assert state["ema_state"]["n_averaged"].device.type == "cpu"  # the count stays on the host
    assert all(np.isfinite(v) for v in resumed.reports[0].values() if isinstance(v, float))


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_sampling_on_the_gpu_equals_the_cpu_for_the_same_noise():
    model = far_model()
    cpu = OneStepSampler(copy.deepcopy(model), 100, device="cpu")
    gpu = OneStepSampler(copy.deepcopy(model), 100)  # default: CUDA when there is one
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    noise = cpu.noise(512, seed=0)
    x_cpu, x_gpu = cpu.from_noise(noise), gpu.from_noise(noise)
    assert x_gpu.device.type == "cpu"  # handed back ready for numpy
    torch.testing.assert_close(x_gpu, x_cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.invert(x_cpu), cpu.invert(x_cpu), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(
        gpu.collapsed.dense().cpu(), cpu.collapsed.dense(), atol=1e-10, rtol=1e-10
    )  # the float64 collapse
    # a seed gives the same noise on one device, every time
    assert torch.equal(gpu.sample(64, seed=5), gpu.sample(64, seed=5))


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_evaluation_on_the_gpu_equals_the_cpu(moons):
    test, _, _ = read_split(moons / "test.parquet")
    train, _, _ = read_split(moons / "train.parquet")
    labels = -np.ones(len(train), dtype=np.int64)  # no classes: no classifier
    model = far_model()
    runs = {
        dev: evaluate(copy.deepcopy(model), test, train, labels, 20, 0, device=dev)
        for dev in ("cpu", "cuda")
    }
    (cpu, _, cpu_images), (gpu, _, gpu_images) = runs["cpu"], runs["cuda"]
    for key in (
        "mmd",
        "swd",
        "energy",
        "nll_bits_per_dim",
        "inversion_median_energy",
        "inversion_inside_shell",
        "interpolation_mmd",
        "collapse_floor",
        "collapse_min_singular_value",
    ):
        assert abs(gpu[key] - cpu[key]) <= 1e-3 * (1 + abs(cpu[key])), key
    assert gpu["psnr_one_vs_multi_euler"] > 200  # the collapse is exact on the GPU too
    np.testing.assert_allclose(gpu_images["samples"], cpu_images["samples"], atol=1e-4)


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_step_never_waits_for_the_gpu(precision):
    """``torch.cuda.set_sync_debug_mode("error")`` raises on any GPU -> host sync: none in the
    forward (lincore's value checks off), backward, clipping, Adam, the EMA or the loss watch."""
    device = torch.device("cuda", 0)
    model = far_model().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp = MixedPrecision(precision, device)
    averager = EmaWithWarmup(0.99)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=averager)
    watch = LossWatch(device)
    x = torch.randn(128, 2, device=device)
    for step in range(3):  # the first creates Adam's state
        if step == 1:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            loss = train_step(model, opt, amp, x, lr=1e-3, grad_clip=1.0)
            averager.update_parameters(ema, model)
            watch.add(loss, step)
        finally:
            if step == 2:
                torch.cuda.set_sync_debug_mode("default")
    assert watch.first_bad() is None


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_bf16_and_fp16_steps_are_finite_and_close_to_fp32():
    device = torch.device("cuda", 0)
    base = far_model().to(device)
    x = torch.randn(256, 2, device=device)
    losses: dict[str, list[float]] = {}
    for precision in ("fp32", "bf16", "fp16"):
        model = copy.deepcopy(base)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        amp = MixedPrecision(precision, device)
        losses[precision] = []
        for step in range(5):
            torch.manual_seed(step)  # the same noise and times for every precision
            losses[precision].append(
                float(train_step(model, opt, amp, x, lr=1e-3, grad_clip=1.0).detach())
            )
        assert all(np.isfinite(losses[precision])), precision
        assert all(torch.isfinite(p).all() for p in model.parameters()), precision
        assert model.roundtrip_error(x) < 1e-4, precision  # g stays a float32 bijection
    first = losses["fp32"][0]
    for precision in ("bf16", "fp16"):
        assert abs(losses[precision][0] - first) < 0.03 * (1 + abs(first)), precision


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_linearizer_sample_runs_on_the_gpu(tmp_path):
    from pipelines.commands import cli

    path = tmp_path / "model.pt"
    checkpoints.save(path, far_model(), SMALL, (2,))
    cli.main(["sample", "--model", str(path), "--n", "16", "--out", str(tmp_path / "g.png")])
    cli.main(["sample", "--model", str(path), "--out", str(tmp_path / "c.png"), "--device", "cpu"])
    assert (tmp_path / "g.png").is_file() and (tmp_path / "c.png").is_file()
    sampler = cli.load_sampler(str(path), 100, "cuda")
    assert sampler.device.type == "cuda" and sampler.sample(4).device.type == "cpu"


# --- two NCCL workers -----------------------------------------------------------------------
WORLD = 2


class RecordingSession(RayTrainSession):
    """``RayTrainSession`` that saves this rank's final weights (on the CPU) and device."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = Path(folder)

    def wrap_model(self, model: torch.nn.Module, *, find_unused: bool = False) -> torch.nn.Module:
        self.model = model
        return super().wrap_model(model, find_unused=find_unused)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        super().report(metrics, state)
        record = {
            "device": str(next(self.model.parameters()).device),
            "threads": self.cpu_threads,
            "metrics": metrics,
            "state": on_cpu(self.model.state_dict()),
        }
        torch.save(record, self.folder / f"epoch{int(metrics['epoch'])}-rank{self.rank}.pt")


def per_worker(config: dict[str, Any]) -> None:
    fit_epochs(config, RecordingSession(config["record_to"]))


@pytest.fixture
def local_gpu_ray(monkeypatch):
    """A local Ray in this process that sees this machine's GPUs; shut down afterwards."""
    with in_process_ray(monkeypatch, __name__, num_cpus=WORLD):
        yield


@pytest.mark.slow
@pytest.mark.skipif(not TWO_GPUS, reason="needs CUDA with 2 GPUs: NCCL DDP across two workers")
def test_two_nccl_workers_keep_identical_replicas(moons, tmp_path, local_gpu_ray):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = parse(
        {
            "model": SMALL.__dict__,
            "train": {"epochs": 2, "batch_size": 64, "num_workers": WORLD, "use_gpu": True},
            "evaluate": {"steps": 10},
        }
    )
    config = loop_config(cfg, moons / "train.parquet", moons / "val.parquet")
    records = tmp_path / "records"
    records.mkdir()
    TorchTrainer(
        per_worker,
        train_loop_config={**config, "record_to": str(records)},
        scaling_config=ray.train.ScalingConfig(num_workers=WORLD, use_gpu=True),
        torch_config=TorchConfig(backend="nccl"),
        run_config=ray.train.RunConfig(name="nccl", storage_path=str(tmp_path / "ray")),
    ).fit()
    final = [torch.load(records / f"epoch1-rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [rec["device"].split(":")[0] for rec in final] == ["cuda", "cuda"]
    assert final[0]["metrics"]["train_loss"] != final[1]["metrics"]["train_loss"]  # own shards
    for key, weights in final[0]["state"].items():
        assert torch.equal(weights, final[1]["state"][key]), f"replicas differ in {key}"
