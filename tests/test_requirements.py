"""The pins the project hands to a joined Ray cluster and to its MLflow model come from one
place, ``pyproject.toml``, as installed."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement

from pipelines import requirements
from pipelines.tracking import serving_requirements
from pipelines.tracking.sampler_model import SERVING_PACKAGES

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [d.split("#")[0].replace(" ", "") for d in project["dependencies"]]


def _same(specs: list[str]) -> list[str]:
    """Requirements as ``packaging`` writes them (extras sorted): the installed metadata keeps
    them in its own order."""
    return sorted(str(Requirement(s)) for s in specs)


def test_every_pin_of_pyproject_reaches_the_cluster_runtime_env():
    pinned = requirements.pinned()
    assert _same(pinned) == _same(_declared())
    assert "torch==2.13.0" in pinned  # the pin that keeps a CPU box off the CUDA wheel
    assert not any("pytest" in p or "moto" in p for p in pinned)  # no dev extras


def test_the_served_model_asks_for_the_same_pins_in_its_own_order():
    served = serving_requirements()
    declared = {requirements._name(d): d for d in _declared()}
    assert [requirements._name(s) for s in served] == list(SERVING_PACKAGES)
    assert _same(served) == _same([declared[name] for name in SERVING_PACKAGES])


def test_a_name_the_project_does_not_pin_stays_bare():
    assert requirements.pinned(["torch", "not-a-dependency"]) == [
        "torch==2.13.0",
        "not-a-dependency",
    ]
