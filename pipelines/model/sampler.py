"""``OneStepSampler``: a trained generator with its sampler collapsed, ready to draw samples.

This is the object the MLflow model loads back into, and what ``linearizer sample``, the
evaluate stage and the training loop's validation use. It runs on a device of its own (CUDA when
there is one, else the CPU, or ``device=``) and hands results back on the CPU, ready for numpy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lincore.generators import OneStepFlowMatching
from lincore.sampling import CollapsedSampler, Method
from pipelines.errors import ConfigError
from pipelines.model import checkpoints as checkpoint


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when this process sees a GPU, else the CPU (``None`` or ``"auto"``)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def parse_device(text: str, option: str = "--device") -> torch.device:
    """A command-line device (``auto``, ``cpu``, ``cuda``, ``cuda:1``), checked: a ``ConfigError``
    naming ``option`` for a malformed one or a GPU this process does not see."""
    try:
        device = default_device(text)
    except RuntimeError:
        raise ConfigError(
            f"{option} {text!r} is not a device; use auto, cpu, cuda or cuda:<index>"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(
                f"{option} {text}: this process sees {count} CUDA GPU(s); use {option} cpu or auto"
            )
    elif device.type != "cpu":
        raise ConfigError(f"{option} {text!r}: only cpu and cuda devices are supported")
    return device


class OneStepSampler:
    """``x = g^-1(B g(e; 0); 1)`` with ``B`` the collapsed ``steps``-step sampler.

    The sampler takes ``model`` over: it is put in eval mode on ``device`` (in place, like
    ``Module.to``), where the collapse (float64) and every pass run. ``sample``, ``from_noise``,
    ``invert`` and ``interpolate`` accept tensors on any device and return CPU tensors.
    """

    def __init__(
        self,
        model: OneStepFlowMatching,
        steps: int = 100,
        method: Method = "euler",
        *,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = default_device(device)
        self.model = model.to(self.device).eval()
        self.steps, self.method = steps, method
        self.collapsed: CollapsedSampler = model.collapse(steps, method)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, steps: int = 100, *, device: str | torch.device | None = None
    ) -> OneStepSampler:
        model, _ = checkpoint.load(path)
        return cls(model, steps, device=device)

    def to(self, device: str | torch.device | None) -> OneStepSampler:
        """The same sampler on ``device`` (``self`` when it is there already)."""
        target = default_device(device)
        if target == self.device:
            return self
        return OneStepSampler(self.model, self.steps, self.method, device=target)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.model.event_shape

    def _in(self, x: Tensor) -> Tensor:
        """``x`` on the sampler's device in the model's dtype (a copy to a GPU need not wait)."""
        dtype = next(self.model.parameters()).dtype
        return x.to(self.device, dtype, non_blocking=self.device.type == "cuda")

    @torch.no_grad()
    def noise(self, n: int, *, seed: int = 0) -> Tensor:
        """``n`` draws of ``N(0, I)`` made on the sampler's device by a generator seeded with
        ``seed``: the same noise for a seed on one device (another device draws other noise)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(n, *self.event_shape, generator=gen, device=self.device)

    def from_noise(self, noise: Tensor) -> Tensor:
        """One-step samples from ``noise`` ``(N, *event_shape)``, on the CPU."""
        return self.model.sample_one_step(self._in(noise), self.collapsed).cpu()

    def sample(self, n: int, *, seed: int = 0) -> Tensor:
        """``n`` one-step samples from ``noise(n, seed=seed)``, on the CPU."""
        return self.from_noise(self.noise(n, seed=seed))

    def invert(self, x: Tensor) -> Tensor:
        """Data back to the noise that generates it, on the CPU."""
        return self.model.invert(self._in(x), self.collapsed).cpu()

    def interpolate(self, xa: Tensor, xb: Tensor, alphas: Tensor) -> Tensor:
        """``(len(alphas), B, ...)`` samples between data points, through their noise, on the
        CPU."""
        return self.model.interpolate(self._in(xa), self._in(xb), alphas, self.collapsed).cpu()
