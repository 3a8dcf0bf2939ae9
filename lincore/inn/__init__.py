"""Invertible networks: blocks with exact inverses and log-determinants."""

from lincore.inn.actnorm import ActNorm
from lincore.inn.base import (
    FlowOutput,
    Inverse,
    InvertibleBlock,
    InvertibleSequential,
    set_recompute,
)
from lincore.inn.coupling import (
    COUPLINGS,
    AffineCoupling,
    ConvConditioner,
    MLPConditioner,
    coupling_block,
)
from lincore.inn.flows import (
    Conditioned,
    CouplingFlow,
    Flow,
    ImageFlow,
    MultiScaleImageFlow,
    Reshaped,
)
from lincore.inn.multiscale import ScaleLevel, TwoScaleConditioner, max_levels
from lincore.inn.permutation import InvertibleConv1x1, Permutation
from lincore.inn.pixels import LogitPixels
from lincore.inn.spline import SplineCoupling, rational_quadratic
from lincore.inn.squeeze import Squeeze

__all__ = [
    "COUPLINGS",
    "ActNorm",
    "AffineCoupling",
    "Conditioned",
    "ConvConditioner",
    "CouplingFlow",
    "Flow",
    "FlowOutput",
    "ImageFlow",
    "Inverse",
    "InvertibleBlock",
    "InvertibleConv1x1",
    "InvertibleSequential",
    "LogitPixels",
    "MLPConditioner",
    "MultiScaleImageFlow",
    "Permutation",
    "Reshaped",
    "ScaleLevel",
    "SplineCoupling",
    "Squeeze",
    "TwoScaleConditioner",
    "coupling_block",
    "max_levels",
    "rational_quadratic",
    "set_recompute",
]
