"""The project's own DDP: two gloo workers of a Ray Train ``TorchTrainer`` on a local Ray run the
one training loop (``fit_epochs``) with the project's ``RayTrainSession`` on the project's model.
The replicas see different data and must still end bit for bit identical, and trained (STYLE
G12); with ``prepare_model`` replaced by the identity (no DDP) they diverge and this fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import in_process_ray

from pipelines.config import parse
from pipelines.training.driver import loop_config
from pipelines.training.loop import fit_epochs
from pipelines.training.session import RayTrainSession

WORLD, EPOCHS = 2, 2


class RecordingSession(RayTrainSession):
    """``RayTrainSession`` that also saves this rank's weights to ``folder``: as built (before
    ``wrap_model`` wraps the model) and after each epoch's report, with the rank's metrics."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = Path(folder)

    def wrap_model(self, model: torch.nn.Module, *, find_unused: bool = False) -> torch.nn.Module:
        self.model = model  # the module DDP wraps: the weights this rank trains
        self.parameters = [name for name, _ in model.named_parameters()]
        self._save("init", {})
        return super().wrap_model(model, find_unused=find_unused)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        super().report(metrics, state)
        self._save(f"epoch{int(metrics['epoch'])}", metrics)

    def _save(self, name: str, metrics: dict[str, float]) -> None:
        record = {
            "world": self.world,
            "metrics": metrics,
            "parameters": self.parameters,
            "state": self.model.state_dict(),
        }
        torch.save(record, self.folder / f"{name}-rank{self.rank}.pt")


def per_worker(config: dict[str, Any]) -> None:
    fit_epochs(config, RecordingSession(config["record_to"]))


@pytest.fixture
def local_ray(monkeypatch):
    """A local 2-CPU Ray in this process, in a temp folder of its own; shut down afterwards."""
    with in_process_ray(monkeypatch, __name__, num_cpus=WORLD):
        yield


@pytest.mark.slow
@pytest.mark.parametrize("recompute, warmup", [("off", 0.0), ("on", 0.5)])
def test_ddp_replicas_of_the_training_loop_stay_identical(
    moons, tmp_path, local_ray, recompute, warmup
):
    """With ``train.recompute: on`` too: recomputed activations (non-reentrant checkpointing)
    still give DDP every parameter's gradient once, and the replicas stay identical. With a
    warm-up (the first epoch of two): DDP finds the parameters it leaves without a gradient
    (the operator), which stay as built through it and train after it."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = parse(
        {
            "model": {"rank": 2, "depth": 2, "hidden": 16, "operator_hidden": 16},
            "train": {
                "epochs": EPOCHS,
                "batch_size": 64,
                "num_workers": WORLD,
                "recompute": recompute,
                "warmup": warmup,
            },
            "evaluate": {"steps": 10},
        }
    )
    config = loop_config(cfg, moons / "train.parquet", moons / "val.parquet")
    records = tmp_path / "records"
    records.mkdir()
    trainer = TorchTrainer(
        per_worker,
        train_loop_config={**config, "record_to": str(records)},
        scaling_config=ray.train.ScalingConfig(num_workers=WORLD, use_gpu=False),
        torch_config=TorchConfig(backend="gloo"),
        run_config=ray.train.RunConfig(name="ddp", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()

    def load(name: str) -> dict[str, Any]:
        return torch.load(records / f"{name}.pt", weights_only=False)

    init = [load(f"init-rank{r}") for r in range(WORLD)]
    final = [load(f"epoch{EPOCHS - 1}-rank{r}") for r in range(WORLD)]
    assert all(rec["world"] == WORLD for rec in final)
    # each rank trained on its own shard with its own noise (different losses) ...
    first = [load(f"epoch0-rank{r}")["metrics"]["train_loss"] for r in range(WORLD)]
    assert first[0] != first[1]
    # ... yet DDP averaged the gradients: the replicas are the same weights, bit for bit
    assert final[0]["state"].keys() == final[1]["state"].keys() == init[0]["state"].keys()
    for key, weights in final[0]["state"].items():
        assert torch.equal(weights, final[1]["state"][key]), f"replicas differ in {key}"
    # and they trained: every parameter moved from the weights it was built with
    assert init[0]["parameters"]
    for key in init[0]["parameters"]:
        assert torch.equal(init[0]["state"][key], init[1]["state"][key]), key  # built alike
        assert not torch.equal(final[0]["state"][key], init[0]["state"][key]), f"{key} untrained"
    if warmup:
        warm = [load(f"epoch0-rank{r}")["state"] for r in range(WORLD)]
        operator = [k for k in init[0]["parameters"] if k.startswith("operator.")]
        flow = [k for k in init[0]["parameters"] if k.startswith("g.")]
        assert operator and flow
        for key in operator:  # no gradient in the warm-up: untouched, on both replicas
            assert torch.equal(warm[0][key], init[0]["state"][key]), key
            assert torch.equal(warm[1][key], init[0]["state"][key]), key
        assert all(not torch.equal(warm[0][k], init[0]["state"][k]) for k in flow)
