"""Ray Tune + Optuna searches over the rank of ``A``, the INN depth and the rest
(``python -m sweeps.<name>``); they land with the sweep work."""
