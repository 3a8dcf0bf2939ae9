"""Ray Tune + Optuna searches over the Linearizer's knobs (rank of ``A``, INN depth, ...)."""
