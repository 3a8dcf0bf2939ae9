"""Metrics that judge generators, with no downloaded weights, one concept per module.

- ``fidelity``: paired batches against each other (PSNR, max error) and ``g``'s round trip.
- ``sample_distances``: sample sets against held-out data (MMD, sliced Wasserstein, energy,
  Fréchet).
- ``running``: accumulators that give those numbers batch by batch, one batch in memory.
- ``typical_values``: inverted data against ``N(0, I)`` noise, samples against the value range.
- ``precision_recall``: k-NN precision (samples look real) and recall (they cover the data).
- ``timing``: median wall time.

Import from here: the modules are where the code lives, this is where the names are.
"""

from lincore.metrics._common import _check_pair as _check_pair  # tests match its errors
from lincore.metrics.fidelity import max_error, psnr, psnr_from_mse, roundtrip_error
from lincore.metrics.precision_recall import precision_recall
from lincore.metrics.running import RunningError, RunningMoments
from lincore.metrics.sample_distances import (
    BANDWIDTH_SCALES,
    BLOCK,
    NEAR,
    distances,
    energy_distance,
    frechet_distance,
    median_bandwidths,
    mmd,
    mmd2,
    pair_mean,
    sliced_wasserstein,
)
from lincore.metrics.timing import median_seconds
from lincore.metrics.typical_values import (
    chi2_quantile,
    outside_count,
    outside_range,
    typicality,
    typicality_from_energies,
)

__all__ = [
    "BANDWIDTH_SCALES",
    "BLOCK",
    "NEAR",
    "RunningError",
    "RunningMoments",
    "chi2_quantile",
    "distances",
    "energy_distance",
    "frechet_distance",
    "max_error",
    "median_bandwidths",
    "median_seconds",
    "mmd",
    "mmd2",
    "outside_count",
    "outside_range",
    "pair_mean",
    "precision_recall",
    "psnr",
    "psnr_from_mse",
    "roundtrip_error",
    "sliced_wasserstein",
    "typicality",
    "typicality_from_energies",
]
