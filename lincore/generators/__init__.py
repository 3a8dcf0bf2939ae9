"""Generators built from Linearizers, and the baseline they are measured against."""

from lincore.generators.baseline import FlowMatchingBaseline, VelocityMLP
from lincore.generators.one_step import LossWeights, OneStepFlowMatching, bits_per_dim
from lincore.generators.projective import ProjectiveGenerator
from lincore.generators.style import StyleTransfer

__all__ = [
    "FlowMatchingBaseline",
    "LossWeights",
    "OneStepFlowMatching",
    "ProjectiveGenerator",
    "StyleTransfer",
    "VelocityMLP",
    "bits_per_dim",
]
