"""The data and the models every one-step table trains: one place for their sizes, so that the
tables compare the same models (and parameter budgets) that the quality table reports."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lincore.generators import (
    FlowMatchingBaseline,
    LossWeights,
    MaximumLikelihoodFlow,
    MeanFlow,
    MeanVelocityMLP,
    OneStepFlowMatching,
    VelocityMLP,
)
from lincore.inn import CouplingFlow, Reshaped
from lincore.toys import toy
from pipelines.config import DataConfig, ModelConfig
from pipelines.data import build as build_dataset

STEPS = 100
"""T of the multi-step samplers that the one step is collapsed from and compared against."""


@dataclass(frozen=True)
class Data:
    name: str
    train: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    bins: int = 0
    """grey levels of dequantised discrete data (0: continuous)"""


def load(name: str, seed: int = 0) -> Data:
    """Toys are generated; digits ship inside scikit-learn (1,797 8x8 images, 17 grey levels)."""
    if name != "digits":
        return Data(
            name, toy(name, 20000, seed=seed).float(), toy(name, 2000, seed=seed + 1).float()
        )
    digits = build_dataset(DataConfig(name="digits", seed=seed))  # dequantised, as the pipeline's
    x, y = torch.from_numpy(digits.x), torch.from_numpy(digits.labels)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = perm[:1437], perm[1437:]
    return Data(name, x[train], x[test], y[train], y[test], bins=digits.bins)


DEFAULT_WEIGHTS = LossWeights(
    **{f.name: getattr(ModelConfig(), f"w_{f.name}") for f in dataclasses.fields(LossWeights)}
)
"""The loss weights of ``params.yaml``'s defaults: the benchmark measures what ships."""


def build_linearizer(
    data: Data,
    operator: str = "isotropic_psd",
    weights: LossWeights | None = None,
    coupling: str = "affine",
) -> OneStepFlowMatching:
    """The Linearizer at its benchmark size (small on 2-D toys), seeded: arms start alike."""
    shape = tuple(data.train.shape[1:])
    weights = weights or DEFAULT_WEIGHTS
    torch.manual_seed(0)
    if math.prod(shape) == 2:
        return OneStepFlowMatching.build(
            shape,
            rank=2,
            depth=4,
            hidden=64,
            operator_hidden=64,
            operator=operator,
            weights=weights,
            coupling=coupling,
        )
    return OneStepFlowMatching.build(
        shape,
        rank=16,
        depth=8,
        hidden=256,
        operator_hidden=256,
        operator=operator,
        weights=weights,
        coupling=coupling,
    )


def build_flow(data: Data, coupling: str = "affine") -> MaximumLikelihoodFlow:
    """The Linearizer's ``g`` (same depth and width, unconditional) as a plain normalizing flow."""
    shape = tuple(data.train.shape[1:])
    dim = math.prod(shape)
    torch.manual_seed(0)
    depth, hidden = (4, 64) if dim == 2 else (8, 256)
    g = CouplingFlow(dim, depth, hidden, coupling=coupling)
    return MaximumLikelihoodFlow(g if len(shape) == 1 else Reshaped(g, shape))


def build_baseline(data: Data, target_params: int) -> FlowMatchingBaseline:
    """An MLP velocity with about ``target_params`` parameters (3 hidden layers)."""
    shape = tuple(data.train.shape[1:])
    hidden = 16
    while n_params(velocity := VelocityMLP(shape, hidden=hidden, depth=3)) < target_params:
        hidden += 8  # grow the width until the parameter count matches the Linearizer's
    return FlowMatchingBaseline(velocity)


def build_meanflow(data: Data, target_params: int) -> MeanFlow:
    """MeanFlow with an MLP ``u(z, r, t)`` of about ``target_params`` parameters. One embedding
    frequency (``embed_dim=2``): the top frequency enters its target through ``du/dr`` and the
    default 32 rad made short runs erratic (see ``lincore.generators.meanflow``)."""
    shape = tuple(data.train.shape[1:])
    hidden = 16
    while n_params(u := MeanVelocityMLP(shape, hidden=hidden, depth=3, embed_dim=2)) < (
        target_params
    ):
        hidden += 8
    return MeanFlow(u)


def n_params(m: torch.nn.Module) -> int:
    """Parameter count: the budget the baselines are sized to match."""
    return sum(p.numel() for p in m.parameters())
