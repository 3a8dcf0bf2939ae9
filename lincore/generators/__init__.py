"""Generators built from Linearizers, and the baselines they are measured against."""

from lincore.generators.baseline import FlowMatchingBaseline, MaximumLikelihoodFlow, VelocityMLP
from lincore.generators.conv_velocity import ConvVelocity
from lincore.generators.interpolation import slerp
from lincore.generators.likelihood import bits_per_dim
from lincore.generators.meanflow import MeanFlow, MeanVelocityMLP
from lincore.generators.one_step import OneStepFlowMatching
from lincore.generators.one_step_config import (
    COUPLINGS,
    FLOWS,
    PIXELS,
    LossWeights,
    OneStepConfig,
    max_rank,
)
from lincore.generators.projective import ProjectiveGenerator
from lincore.generators.style import StyleTransfer

__all__ = [
    "COUPLINGS",
    "FLOWS",
    "PIXELS",
    "ConvVelocity",
    "FlowMatchingBaseline",
    "LossWeights",
    "MaximumLikelihoodFlow",
    "MeanFlow",
    "MeanVelocityMLP",
    "OneStepConfig",
    "OneStepFlowMatching",
    "ProjectiveGenerator",
    "StyleTransfer",
    "VelocityMLP",
    "bits_per_dim",
    "max_rank",
    "slerp",
]
