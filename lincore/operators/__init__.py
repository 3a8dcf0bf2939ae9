"""Linear operators ``A`` between latent spaces, with factorised linear algebra."""

from lincore.operators.base import SVD, Composed, Factored, LinearOperator, factored_svd
from lincore.operators.deep_linear import DeepLinear
from lincore.operators.dense import Dense, LowRank
from lincore.operators.depthwise import DepthwiseConv
from lincore.operators.idempotent import Idempotent
from lincore.operators.time_isotropic import (
    OPERATOR_KINDS,
    TimeIsotropicLowRank,
    TimeOperator,
    time_operator,
)
from lincore.operators.time_low_rank import TimeLowRank

__all__ = [
    "OPERATOR_KINDS",
    "SVD",
    "Composed",
    "DeepLinear",
    "Dense",
    "DepthwiseConv",
    "Factored",
    "Idempotent",
    "LinearOperator",
    "LowRank",
    "TimeIsotropicLowRank",
    "TimeLowRank",
    "TimeOperator",
    "factored_svd",
    "time_operator",
]
