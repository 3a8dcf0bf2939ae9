"""The one-step model's knobs and loss weights, apart from the model: the pipeline's schema
reads (and ``params.yaml`` sets) these, and their defaults live here only."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lincore.inn.coupling import COUPLINGS as COUPLINGS  # ``coupling``: one source, the blocks'

FLOWS = ("coupling", "image")
"""``flow``: the kinds of invertible network the standard model builds."""
PIXELS = ("auto", "raw", "logit")
"""``pixels``: what the data edge does to the samples before ``g(.; 1)``."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of the objective: the paper's four and two likelihoods.

    No defaults here: the project's defaults live in ``OneStepConfig`` (one source), and the
    paper's objective is ``LossWeights.paper()``.
    """

    latent: float
    noise_reconstruction: float
    data_reconstruction: float
    prediction: float
    data_likelihood: float
    """Beyond the paper: ``-log N(g(x1; 1); 0, I) - log|det J|`` per dimension, which pushes
    ``g(.; 1)`` to Gaussianise the data so that a linear latent sampler can reach it. 0 = off."""
    one_step_likelihood: float
    """Beyond the paper: the exact NLL of the one-step generator itself (``log_prob`` through the
    collapsed sampler, differentiated), per dimension. Costs one more pass of ``g`` each way per
    step; needs an operator with shared bases (``isotropic_*``). 0 = off."""

    @classmethod
    def paper(cls, **changes: float) -> LossWeights:
        """The paper's objective (its four terms, weight 1; no likelihoods), with ``changes``."""
        base = {
            "latent": 1.0,
            "noise_reconstruction": 1.0,
            "data_reconstruction": 1.0,
            "prediction": 1.0,
            "data_likelihood": 0.0,
            "one_step_likelihood": 0.0,
        }
        return cls(**{**base, **changes})


@dataclass(frozen=True)
class OneStepConfig:
    """The knobs of the standard one-step model: ``params.yaml``'s ``model`` section.

    The one source of their defaults: the pipeline's schema is this class.
    """

    rank: int = 16
    """rank r of the time-conditioned operator A_t (1..D)"""
    depth: int = 6
    """coupling blocks in the invertible network g"""
    hidden: int = 128
    operator_hidden: int = 128
    """width of the time network that makes a(t) and the r x r core of A_t"""
    operator: str = "isotropic_psd"
    """kind of A_t: isotropic_psd (a(t) I + U S_t U^T, S_t >= 0: no direction lost, bounded
    below) | isotropic_low_rank (a(t) I + U C_t V^T) | low_rank (U_t V_t^T, the original; its
    one-step sampler keeps 1/T of the noise outside rank r)"""
    flow: str = "coupling"
    """coupling (MLP couplings on flattened samples) | image (Glow-style, needs C, H, W)"""
    coupling: str = "affine"
    """affine | spline (rational-quadratic, Durkan et al. 2019: sharper shapes per layer)"""
    levels: int = 0
    """image flow: scales (each squeezes 2x2 and factors half out; depth steps each); 1 = single
    scale; 0 = as many as the image allows, up to 3. depth counts couplings over all levels"""
    pixels: str = "auto"
    """auto (logit for the image flow, raw otherwise) | raw | logit (RealNVP's logit of the
    dequantised pixels: samples in range by construction; needs data in [0, 1])"""
    two_networks: bool | str = "auto"
    """true: separate networks g for noise and data; false: one conditional g for both; auto:
    two for the image flow (warmed up as a plain flow of the data first), one otherwise"""
    sigma: float = 0.3
    w_latent: float = 1.0
    w_noise_reconstruction: float = 1.0
    w_data_reconstruction: float = 1.0
    w_prediction: float = 1.0
    w_data_likelihood: float = 1.0
    w_one_step_likelihood: float = 1.0
    """exact NLL of the one-step generator as a training term (about 2x the cost of a step; the
    rank-only operator allows it up to D = 1024, where its collapse goes dense)"""

    def loss_weights(self) -> LossWeights:
        """The ``w_<term>`` keys as ``LossWeights`` (one key per field)."""
        return LossWeights(
            **{f.name: getattr(self, f"w_{f.name}") for f in dataclasses.fields(LossWeights)}
        )


def max_rank(event_shape: tuple[int, ...]) -> int:
    """The largest rank ``r`` of the operator for data of ``event_shape``: its latent dimension
    ``D`` (ranks lie in ``1..D``). The one statement of the rule: the builder checks it, and the
    pipeline checks ``model.rank`` and a sweep's ranks against it before any work starts."""
    return math.prod(event_shape)
