"""User commands that DVC does not run: ``linearizer sample`` / ``cluster-check`` (``cli``) and
the application demos ``projective`` and ``style`` (each trains on built-in data, standalone)."""
