"""The project's dependencies as ``pyproject.toml`` pins them, read from its installed metadata:
the one place pins are written, for the runtime env of a joined Ray cluster and the MLflow
model's ``pip_requirements``."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

PROJECT = "linearizer"


def _name(spec: str) -> str:
    """``ray[default,tune]==2.60.0`` -> ``ray``."""
    for sep in ("[", "=", ">", "<", "!", "~", ";"):
        spec = spec.split(sep)[0]
    return spec.strip().lower()


def pinned(names: Iterable[str] | None = None) -> list[str]:
    """The project's own requirements (``torch==2.13.0``, ...), extras left out: all of them,
    or those of ``names`` in that order (a name the project does not pin stays bare)."""
    found = {
        _name(req): req.split(";")[0].replace(" ", "")
        for req in metadata.requires(PROJECT) or []
        if "extra ==" not in req
    }
    if names is None:
        return list(found.values())
    return [found.get(name, name) for name in names]
