"""lincore: Linearizers ``f(x) = g_y^-1(A g_x(x))`` and the linear algebra they inherit.

Pure PyTorch: no Ray, no MLflow, no file I/O.
"""

from lincore._checks import unchecked
from lincore.inn import Conditioned, CouplingFlow, Flow, ImageFlow, InvertibleBlock
from lincore.linearizer import Linearizer, SingularPoints, same_network
from lincore.operators import (
    SVD,
    Composed,
    DeepLinear,
    Dense,
    Factored,
    Idempotent,
    LinearOperator,
    LowRank,
)
from lincore.vector_space import VectorSpace

__all__ = [
    "SVD",
    "Composed",
    "Conditioned",
    "CouplingFlow",
    "DeepLinear",
    "Dense",
    "Factored",
    "Flow",
    "Idempotent",
    "ImageFlow",
    "InvertibleBlock",
    "LinearOperator",
    "Linearizer",
    "LowRank",
    "SingularPoints",
    "VectorSpace",
    "same_network",
    "unchecked",
]
