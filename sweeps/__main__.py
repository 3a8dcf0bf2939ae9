"""``python -m sweeps``: run (or ``--resume``) a sweep; see ``sweeps.cli``."""

from sweeps.cli import run

run()
