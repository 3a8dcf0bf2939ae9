"""Generators built from Linearizers, and the baseline they are measured against."""

from lincore.generators.baseline import FlowMatchingBaseline, VelocityMLP
from lincore.generators.one_step import LossWeights, OneStepFlowMatching, bits_per_dim

__all__ = [
    "FlowMatchingBaseline",
    "LossWeights",
    "OneStepFlowMatching",
    "VelocityMLP",
    "bits_per_dim",
]
