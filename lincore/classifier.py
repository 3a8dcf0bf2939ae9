"""A small classifier trained here, whose penultimate layer is the feature space of the Fréchet
distance: FID's idea without downloading Inception weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lincore._checks import check_int


class FeatureClassifier(nn.Module):
    """MLP ``x -> features -> logits`` on flattened inputs."""

    def __init__(self, dim: int, classes: int, *, hidden: int = 256, features: int = 64) -> None:
        super().__init__()
        check_int("dim", dim, low=1)
        check_int("classes", classes, low=2)
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, features),
            nn.GELU(),
        )
        self.head = nn.Linear(features, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def fit_classifier(
    x: Tensor,
    labels: Tensor,
    *,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> FeatureClassifier:
    """Train a ``FeatureClassifier`` with Adam on ``(x, labels)``; returns it in eval mode.

    Small Gaussian input noise keeps the features meaningful off the data manifold too, where
    imperfect samples live.
    """
    torch.manual_seed(seed)
    classes = int(labels.max()) + 1
    model = FeatureClassifier(x[0].numel(), classes).to(x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    scale = x.std()
    with torch.enable_grad():  # callers may evaluate under no_grad
        _train(model, opt, x, labels, steps, batch_size, scale, gen)
    return model.eval()


def _train(
    model: FeatureClassifier,
    opt: torch.optim.Optimizer,
    x: Tensor,
    labels: Tensor,
    steps: int,
    batch_size: int,
    scale: Tensor,
    gen: torch.Generator,
) -> None:
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        xb = x[idx] + 0.05 * scale * torch.randn(x[idx].shape, generator=gen, dtype=x.dtype)
        loss = nn.functional.cross_entropy(model(xb), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def accuracy(model: FeatureClassifier, x: Tensor, labels: Tensor) -> float:
    return float((model(x).argmax(1) == labels).to(torch.float64).mean())
