"""Sample quality: the one scoring function of the project.

The training loop's validation (``val_mmd``, ...), the sweep's score of every model it compares
(``final_mmd``, ...: the champion guard compares these) and the evaluate stage's ``mmd``, ``swd``
and ``energy`` all come from ``sample_quality``; the loop and the sweep also share ``score``, so a
sweep's ``final_mmd`` of a trial's weights equals the ``val_mmd`` its training loop logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lincore.metrics import BLOCK, energy_distance, mmd, sliced_wasserstein, typicality

if TYPE_CHECKING:
    from pipelines.model.sampler import OneStepSampler

SCORE_ROWS = 512
"""Reference rows ``score`` compares with: the head of the validation split."""
NOISE_SEED = 1234
"""The seed of the noise ``score`` draws its samples from: the same samples at every epoch."""


@torch.no_grad()
def sample_quality(
    samples: Tensor,
    reference: Tensor,
    *,
    bandwidths: Sequence[float] | None = None,
    block: int = BLOCK,
) -> dict[str, float]:
    """``mmd``, ``swd`` (sliced Wasserstein) and ``energy`` distances of ``samples`` from
    ``reference``, each summed ``block`` rows at a time (no ``n x n`` matrix). ``bandwidths``
    of the MMD kernels default to the median heuristic on ``reference``."""
    return {
        "mmd": mmd(samples, reference, bandwidths, block=block),
        "swd": sliced_wasserstein(samples, reference, block=block),
        "energy": energy_distance(samples, reference, block=block),
    }


@torch.no_grad()
def score(sampler: OneStepSampler, reference: Tensor) -> dict[str, float]:
    """One-step sample quality of a collapsed sampler against the first ``SCORE_ROWS`` rows of
    ``reference`` (held-out data), from as many samples of noise seed ``NOISE_SEED``; and
    ``inversion_energy``, the median ``|e|^2 / D`` of those rows inverted to noise (about 1
    when the generator covers the data). The noise is drawn on the sampler's device."""
    ref = torch.as_tensor(reference[:SCORE_ROWS])
    samples = sampler.sample(len(ref), seed=NOISE_SEED)
    quality = sample_quality(samples, ref.cpu().to(samples.dtype))
    noise = sampler.invert(ref)
    return {**quality, "inversion_energy": typicality(noise)["median_energy"]}
