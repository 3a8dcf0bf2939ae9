"""The rank rule, checked before any work starts: the operator's rank ``r`` lies in ``1..D``
(``lincore``'s ``max_rank``: the latent dimension of the data). The train stage checks
``model.rank``, a sweep every rank its space can draw."""

from __future__ import annotations

from lincore.generators import max_rank
from pipelines.errors import ConfigError


def check_rank(rank: int, shape: tuple[int, ...], *, key: str = "model.rank") -> None:
    """A ``ConfigError`` naming ``key`` when ``rank`` cannot be built for data of ``shape``."""
    dim = max_rank(shape)
    if not 1 <= rank <= dim:
        raise ConfigError(
            f"{key}={rank} is impossible for samples of shape {shape}: the latent "
            f"dimension is {dim}, so the rank must be in 1..{dim}"
        )
