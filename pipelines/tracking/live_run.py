"""Rank 0's line to the train stage's MLflow run while Ray Train trains."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from pipelines.tracking.runs import epoch_metrics, logged_steps

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pipelines.model.sampler import OneStepSampler


class LiveRun:
    """Rank 0's line to the train stage's MLflow run while Ray Train trains: each epoch's
    metrics as the epoch ends and, every ``image_every`` epochs, a sample grid (and, for images,
    an interpolation strip) under ``training/``.

    Steps the run already has are skipped: a resumed run (or a restarted worker group) retrains
    the epochs after its last checkpoint, which may have been logged before the interruption.
    Logging is best effort: a tracking hiccup is reported and training goes on.
    """

    def __init__(self, spec: dict[str, Any], image_every: int) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(spec["tracking_uri"])
        self.run_id: str = spec["run_id"]
        self.grid, self.image_every = int(spec.get("grid", 64)), image_every
        try:
            self.logged_through = max(logged_steps(self.client, self.run_id), default=0)
        except Exception as err:  # unreadable now: log every epoch rather than stop training
            self._warn(f"cannot read the run's metric history ({err})")
            self.logged_through = 0

    @staticmethod
    def _warn(problem: str) -> None:
        print(f"warning: MLflow: {problem}; training goes on", file=sys.stderr, flush=True)

    @classmethod
    def from_config(cls, config: dict[str, Any], image_every: int) -> LiveRun | None:
        """The live run named by ``config["mlflow"]``; ``None`` without one (sweep trials, whose
        child runs Tune's MLflow callback keeps)."""
        spec = config.get("mlflow")
        return cls(spec, image_every) if spec else None

    def epoch_end(
        self, metrics: dict[str, Any], sampler: OneStepSampler, reference: torch.Tensor
    ) -> None:
        """Log the epoch that just ended (``metrics["epoch"]``, 0-based) at step epoch + 1."""
        step = int(metrics["epoch"]) + 1
        if step <= self.logged_through:
            return
        try:
            self.client.log_batch(self.run_id, metrics=epoch_metrics(metrics))
            if self.image_every and step % self.image_every == 0:
                self.log_images(step, sampler, reference)
        except Exception as err:  # train.py logs the epochs missing at the end
            self._warn(f"logging epoch {step} failed ({err})")
        self.logged_through = step

    def log_images(self, step: int, sampler: OneStepSampler, reference: torch.Tensor) -> None:
        """A fixed-seed sample grid from ``sampler`` (the collapse the validation metrics
        already built) and, for images, four interpolation strips between reference pairs."""
        import matplotlib.pyplot as plt
        import torch

        from pipelines import figures

        ref = reference.detach().cpu()
        image = len(sampler.event_shape) > 1
        scatter = tuple(sampler.event_shape) == (2,)  # 2-D points: a cloud, not a grid
        pairs = min(4, len(ref) // 2)
        figs = {}
        try:
            with torch.no_grad():
                x: np.ndarray = sampler.sample(1000 if scatter else self.grid, seed=0).numpy()
                figs[f"training/samples_epoch_{step:04d}.png"] = figures.samples(
                    x, reference=ref.numpy(), title=f"one-step samples, epoch {step}"
                )
                if image and pairs:
                    alphas = torch.linspace(0, 1, 9)
                    a, b = ref[:pairs], ref[pairs : 2 * pairs]
                    path = sampler.model.interpolate(a, b, alphas, sampler.collapsed)
                    figs[f"training/interpolation_epoch_{step:04d}.png"] = figures.interpolation(
                        path.numpy(), title=f"interpolation through the noise, epoch {step}"
                    )
            for name, fig in figs.items():
                self.client.log_figure(self.run_id, fig, name)
        finally:
            for fig in figs.values():
                plt.close(fig)
