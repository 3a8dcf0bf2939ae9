"""Invertible networks: blocks with exact inverses and log-determinants."""

from lincore.inn.actnorm import ActNorm
from lincore.inn.base import FlowOutput, Inverse, InvertibleBlock, InvertibleSequential
from lincore.inn.coupling import AffineCoupling, ConvConditioner, MLPConditioner
from lincore.inn.flows import Conditioned, CouplingFlow, Flow, ImageFlow, Reshaped
from lincore.inn.permutation import InvertibleConv1x1, Permutation
from lincore.inn.squeeze import Squeeze

__all__ = [
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
    "MLPConditioner",
    "Permutation",
    "Reshaped",
    "Squeeze",
]
