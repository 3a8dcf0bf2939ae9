"""Scoring and evaluating trained generators.

- ``quality``: the one scoring function (``score``) that the training loop's validation, every
  model a sweep compares and the evaluate stage's sample figures come from.
- ``trained``: the full evaluation of a trained model on the test split (exactness of the
  collapse, inversion, likelihood, sample quality, speed).
- ``report``: what a reader sees of it: figures, ``metrics.json``, the MLflow run.
"""
