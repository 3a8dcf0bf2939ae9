"""Linear operators ``A`` between latent spaces, with factorised linear algebra."""

from lincore.operators.base import SVD, Composed, Factored, LinearOperator, factored_svd
from lincore.operators.deep_linear import DeepLinear
from lincore.operators.dense import Dense, LowRank
from lincore.operators.depthwise import DepthwiseConv
from lincore.operators.idempotent import Idempotent

__all__ = [
    "SVD",
    "Composed",
    "DeepLinear",
    "Dense",
    "DepthwiseConv",
    "Factored",
    "Idempotent",
    "LinearOperator",
    "LowRank",
    "factored_svd",
]
