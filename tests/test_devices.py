"""Device-correctness that a CPU can check: the resumed optimizer follows the prepared model, the
training hot path reads no tensor value (each read is a GPU -> host sync), mixed precision keeps
the flow's log-determinants in float32 and its collapse in float64, bf16 trains on the CPU, fp16
is refused there, gradient clipping, per-worker threads, and the sampler's device.

``tests/test_gpu.py`` runs the same paths on a GPU where there is one."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from test_faults import FakeSession, moons_config

from lincore import unchecked
from lincore.generators import OneStepFlowMatching
from lincore.identity_plus import IdentityPlusLowRank
from lincore.inn import ImageFlow
from lincore.testing import far_from_identity, far_from_zero
from pipelines.config import ModelConfig, parse
from pipelines.errors import ConfigError, LinearizerError
from pipelines.model import checkpoints
from pipelines.model.sampler import OneStepSampler, default_device, parse_device
from pipelines.training import loop
from pipelines.training.loop import LossWatch, MixedPrecision, fit_epochs
from pipelines.training.session import worker_threads

SMALL = ModelConfig(rank=2, depth=2, hidden=16, operator_hidden=16)


class DoubleSession(FakeSession):
    """A session whose ``wrap_model`` changes the model's dtype, as Ray's ``prepare_model``
    changes its device: whatever the loop restores must follow the prepared model."""

    def wrap_model(self, model: torch.nn.Module, *, find_unused: bool = False) -> torch.nn.Module:
        return model.double()


def far_model(shape: tuple[int, ...] = (2,), seed: int = 0) -> OneStepFlowMatching:
    model = OneStepFlowMatching.build(shape, SMALL, seed=seed, steps=10)
    far_from_identity(model.g, seed=seed)
    far_from_zero(model.operator, seed=seed)
    return model


# --- resume ---------------------------------------------------------------------------------
def test_a_resumed_optimizer_follows_the_prepared_model(moons):
    """Adam's moments are restored after ``prepare`` moved (here: converted) the model, so they
    have the parameters' dtype (on a GPU: their device) when the first resumed step runs."""
    first = FakeSession()
    fit_epochs(moons_config(moons, 1), first)
    assert first.state["optimizer"]["state"][0]["exp_avg"].dtype == torch.float32
    resumed = DoubleSession(first.state)
    fit_epochs(moons_config(moons, 2), resumed)
    assert [r["epoch"] for r in resumed.reports] == [1]
    state = resumed.state
    moments = [
        s[k] for s in state["optimizer"]["state"].values() for k in ("exp_avg", "exp_avg_sq")
    ]
    assert moments and all(m.dtype == torch.float64 for m in moments)
    assert all(w.dtype == torch.float64 for w in state["model"].values() if w.is_floating_point())
    ema = [w for w in state["ema_state"].values() if w.is_floating_point()]
    assert ema and all(w.dtype == torch.float64 for w in ema)
    assert math.isfinite(resumed.reports[0]["val_mmd"])


# --- host syncs -----------------------------------------------------------------------------
READS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist")


@pytest.fixture
def value_reads(monkeypatch):
    """Counts the Python-level reads of a tensor's value (on a GPU each one waits for it)."""
    calls: list[str] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("warmup", [False, True])
@pytest.mark.parametrize("flow", ["coupling", "image"])
def test_the_training_forward_and_backward_read_no_tensor_value(flow, warmup, value_reads):
    """Inside ``unchecked()`` (what ``train_step`` uses) the whole loss, with the one-step
    likelihood's collapse and solve, and its backward pass never read a value (nor does the
    warm-up's); outside it the value checks (NaN input, ActNorm initialised) do."""
    shape = (2,) if flow == "coupling" else (1, 4, 4)
    model = OneStepFlowMatching.build(shape, ModelConfig(**{**SMALL.__dict__, "flow": flow}))
    x = torch.rand(16, *shape)
    model.initialize_from(x)
    model(x, warmup=warmup)["loss"]  # first call outside the count
    value_reads.clear()
    with unchecked():
        loss = model(x, warmup=warmup)["loss"]
    loss.backward()
    assert value_reads == []
    model(x, warmup=warmup)
    assert value_reads  # the checks run at the user-facing edge


def test_value_checks_are_skipped_inside_unchecked_only():
    model = OneStepFlowMatching.build((2,), SMALL)
    nan = torch.tensor([[0.0, float("nan")]] * 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        model(nan)
    with unchecked():
        assert not torch.isfinite(model(nan)["loss"])
    with pytest.raises(ValueError, match="NaN or inf"):  # restored on leaving the block
        model(nan)
    image = ImageFlow(1, 4, 4, depth=1, hidden=8)
    with pytest.raises(RuntimeError, match="ActNorm is not initialised"):
        image(torch.rand(2, 1, 4, 4))
    with unchecked():
        image(torch.rand(2, 1, 4, 4))
    w = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    singular = IdentityPlusLowRank(torch.tensor(1.0, dtype=torch.float64), w, -w)  # I - e e^T
    z = torch.ones(1, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="singular"):
        singular.solve(z)
    with unchecked():
        assert not torch.isfinite(singular.solve(z)).all()


def test_the_loss_watch_finds_the_first_non_finite_step():
    watch = LossWatch(torch.device("cpu"))
    for step, value in enumerate([1.0, 2.0, 3.0, float("nan"), 4.0, float("inf")]):
        watch.add(torch.tensor(value), step)
    assert watch.first_bad()[0] == 3 and math.isnan(watch.first_bad()[1])
    clean = LossWatch(torch.device("cpu"))
    for step in range(4):
        clean.add(torch.tensor(float(step)), step)
    assert clean.first_bad() is None and clean.mean() == 1.5


# --- mixed precision ------------------------------------------------------------------------
@torch.no_grad()
def test_bf16_autocast_keeps_log_dets_float32_the_flow_invertible_and_the_collapse_float64():
    model = far_model()
    x = torch.randn(64, 2)
    z32, ld32 = model.encode_and_log_det(x, 1)
    b32 = model.collapse(10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, ld = model.encode_and_log_det(x, 1)
        back = model.decode(z, 1)
        b = model.collapse(10)
        terms = model(x)
    assert z.dtype == ld.dtype == back.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in terms.values())
    # the conditioners ran in bf16 (the latents moved), yet the inverse undoes the forward map
    assert 1e-5 < float((z - z32).abs().max()) < 0.1
    assert float((ld - ld32).abs().max()) < 0.1
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)
    # the collapse never sees autocast: float64 and bit for bit the float32 model's
    assert b.matrix.W.dtype == torch.float64
    assert torch.equal(b.matrix.W, b32.matrix.W) and torch.equal(b.matrix.alpha, b32.matrix.alpha)


def test_bf16_loss_is_close_to_fp32():
    model = far_model()
    x = torch.randn(256, 2)
    torch.manual_seed(0)
    fp32 = model(x)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x)
    for key, value in fp32.items():
        assert abs(float(bf16[key]) - float(value)) < 0.03 * (1 + abs(float(value))), key


def test_bf16_training_on_the_cpu_is_finite_and_close_to_fp32(moons):
    runs = {}
    for precision in ("fp32", "bf16"):
        session = FakeSession()
        fit_epochs(moons_config(moons, 2, precision=precision), session)
        runs[precision] = session.reports[-1]
    bf16, fp32 = runs["bf16"], runs["fp32"]
    for key in ("train_loss", "val_loss", "val_mmd", "roundtrip_error"):
        assert math.isfinite(bf16[key]), key
    assert abs(bf16["val_loss"] - fp32["val_loss"]) < 0.1 * (1 + abs(fp32["val_loss"]))
    assert abs(bf16["val_mmd"] - fp32["val_mmd"]) < 0.1
    assert bf16["roundtrip_error"] < 1e-4  # g stays a float32 bijection


def test_fp16_is_refused_without_a_gpu(moons):
    with pytest.raises(ConfigError, match=r"train\.precision fp16 needs train\.use_gpu: true"):
        parse({"train": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match=r"train\.precision must be one of fp32, bf16, fp16"):
        parse({"train": {"precision": "float16"}})
    with pytest.raises(LinearizerError, match="fp16 needs a CUDA GPU"):
        MixedPrecision("fp16", torch.device("cpu"))
    # use_gpu: true but the worker got no GPU (a Tune trial on a CPU node): refused, not slow
    with pytest.raises(LinearizerError, match="fp16 needs a CUDA GPU"):
        fit_epochs(moons_config(moons, 1, precision="fp16", use_gpu=True), FakeSession())
    assert parse({"train": {"precision": "bf16"}}).train.precision == "bf16"


# --- gradient clipping ----------------------------------------------------------------------
def test_grad_clip_is_checked_and_clips_the_global_norm(moons, monkeypatch):
    for bad in (-1.0, float("inf")):
        with pytest.raises(ConfigError, match=r"train\.grad_clip must be a finite number >= 0"):
            parse({"train": {"grad_clip": bad}})
    seen: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recorded(params: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(max_norm)
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recorded)
    fit_epochs(moons_config(moons, 1, grad_clip=0.5), FakeSession())
    assert seen and set(seen) == {0.5}
    seen.clear()
    fit_epochs(moons_config(moons, 1, grad_clip=0.0), FakeSession())
    assert seen == []


def test_a_clip_above_every_gradient_norm_changes_nothing(moons):
    """Clipping scales by ``min(1, max_norm / norm)``: exactly 1 below the bound, so a run
    whose gradients stay under it is the unclipped run, bit for bit."""
    states = []
    for grad_clip in (0.0, 1e6):
        session = FakeSession()
        fit_epochs(moons_config(moons, 1, grad_clip=grad_clip), session)
        states.append(session.state["model"])
    for name, w in states[0].items():
        assert torch.equal(w, states[1][name]), name


# --- threads --------------------------------------------------------------------------------
def test_worker_threads_split_the_node_among_its_own_workers():
    # 4 nodes x 8 workers of 64 cores: 8 threads each (the global world, 32, would give 2)
    assert worker_threads(1.0, local_workers=8, node_cpus=64) == 8
    assert worker_threads(16.0, local_workers=8, node_cpus=64) == 16  # Ray assigned more
    assert worker_threads(0.0, local_workers=4, node_cpus=2) == 1


def test_the_loop_takes_its_threads_from_the_session(moons):
    """The loop sets torch's thread count to the session's ``cpu_threads``. The count starts
    at another value (3), so a loop that leaves it alone fails instead of passing by chance
    (on a 2-core machine, or after another test, it may be 1 already)."""
    before = torch.get_num_threads()
    session = FakeSession()
    session.cpu_threads = 1
    try:
        torch.set_num_threads(3)
        assert torch.get_num_threads() == 3 != session.cpu_threads
        fit_epochs(moons_config(moons, 1), session)
        assert torch.get_num_threads() == session.cpu_threads
    finally:
        torch.set_num_threads(before)


# --- the sampler, validation and the loop's modes -------------------------------------------
def test_the_sampler_runs_on_its_device_and_hands_back_cpu_tensors(tmp_path):
    model = far_model()
    sampler = OneStepSampler(model, 10, device="cpu")
    assert sampler.model is model and not model.training
    a, b = sampler.sample(8, seed=3), sampler.sample(8, seed=3)
    assert torch.equal(a, b) and a.device.type == "cpu" and a.dtype == torch.float32
    noise = sampler.noise(8, seed=3)
    torch.testing.assert_close(sampler.from_noise(noise), a)
    torch.testing.assert_close(sampler.invert(a), noise, atol=1e-4, rtol=0)
    assert sampler.interpolate(a[:2], a[2:4], torch.tensor([0.0, 1.0])).shape == (2, 2, 2)
    assert sampler.to("cpu") is sampler
    assert default_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # a float64 model (the evaluate stage's exactness checks) takes float32 noise
    assert OneStepSampler(far_model().double(), 10, device="cpu").sample(4).dtype == torch.float64


def test_bad_devices_are_one_line_config_errors(tmp_path):
    from pipelines.commands import cli

    with pytest.raises(ConfigError, match="'gpu' is not a device"):
        parse_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees 0 CUDA GPU"):
            parse_device("cuda")
    path = tmp_path / "model.pt"
    checkpoints.save(path, far_model(), SMALL, (2,))
    with pytest.raises(ConfigError, match="--device 'tpu' is not a device"):
        cli.main(["sample", "--model", str(path), "--device", "tpu"])
    cli.main(["sample", "--model", str(path), "--n", "8", "--out", str(tmp_path / "g.png")])
    assert (tmp_path / "g.png").is_file()


def test_validation_uses_the_model_in_place_without_changing_it():
    model = far_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xv = torch.randn(64, 2)
    terms, sampler = loop._val_metrics(model.eval(), xv, seed=1234, steps=10)
    assert sampler.model is model  # no copy
    assert {"val_loss", "val_mmd", "val_inversion_energy"} <= set(terms)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    again, _ = loop._val_metrics(model, xv, seed=1234, steps=10)
    assert again == terms  # fixed noise: comparable across epochs


def test_every_training_step_runs_in_train_mode(moons, monkeypatch):
    """Validation puts the model it scores in eval mode (without an EMA that is the model being
    trained); the next epoch's steps must be back in train mode."""
    modes: list[bool] = []
    forward = OneStepFlowMatching.forward

    def watched(self: OneStepFlowMatching, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            modes.append(self.training)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(OneStepFlowMatching, "forward", watched)
    fit_epochs(moons_config(moons, 2, ema_decay=0.0), FakeSession())
    assert modes and all(modes)


def test_the_loops_ema_update_is_averaged_models_own():
    """``EmaWithWarmup.update_parameters`` (no host syncs) matches
    ``AveragedModel.update_parameters`` bit for bit, buffers and count included, from a fresh
    start and after a resume."""
    from torch.optim.swa_utils import AveragedModel

    from pipelines.training.schedule import EmaWithWarmup

    net = far_model()
    theirs_avg, mine_avg = EmaWithWarmup(0.9), EmaWithWarmup(0.9)
    theirs = AveragedModel(net, multi_avg_fn=theirs_avg)
    mine = AveragedModel(net, multi_avg_fn=mine_avg)
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        theirs.update_parameters(net)
        mine_avg.update_parameters(mine, net)
        if step == 2:  # a resume: a fresh averager continues the restored count
            restored = AveragedModel(net, multi_avg_fn=EmaWithWarmup(0.9))
            restored.load_state_dict(mine.state_dict())
            mine_avg = restored.multi_avg_fn
            mine_avg.resume(restored)
            mine = restored
    assert mine.n_averaged.device.type == "cpu" and int(mine.n_averaged) == 6
    assert mine_avg.updates == theirs_avg.updates == 5
    for (name, a), b in zip(theirs.state_dict().items(), mine.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_evaluation_runs_where_it_is_told(moons):
    """The evaluate stage's scoring on an explicit device (the CPU here; ``test_gpu.py``
    compares it with CUDA): numpy images back, the float64 collapse exact."""
    import numpy as np

    from pipelines.data import read_split
    from pipelines.evaluation.trained import evaluate

    test, _, _ = read_split(moons / "test.parquet")
    train, _, _ = read_split(moons / "train.parquet")
    labels = -np.ones(len(train), dtype=np.int64)  # no classes: no classifier
    metrics, rows, images = evaluate(far_model(), test, train, labels, 20, 0, device="cpu")
    assert isinstance(images["samples"], np.ndarray) and images["samples"].shape == test.shape
    assert metrics["psnr_one_vs_multi_euler"] > 200 and math.isfinite(metrics["mmd"])
    assert [r["steps"] for r in rows] == [2, 5, 10, 20, 50, 100]
