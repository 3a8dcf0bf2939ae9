"""dvc.yaml tells the truth: each stage depends on every project file it imports, reads exactly
the params it declares, and writes where the stages write by default.

The imports come from an ``ast`` walk (no module is imported, so no torch or Ray: well under a
second for all four stages) starting at each stage's ``python -m X``. Every ``import`` and
``from ... import`` anywhere in a file counts, inside functions and ``TYPE_CHECKING`` blocks too:
a lazy import still runs when its function does.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from test_pipeline_e2e import BIN, copy_project, sh

from pipelines import config as config_mod
from pipelines.config import UnreadSectionError, load, parse
from pipelines.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lincore", "pipelines", "sweeps")
SECTION_MODULES = {"sweep": "sweeps.cli"}  # where a stage's SECTIONS live, if not its -m module
# each stage's path flags: (flag's dest, its default in pipelines/config/paths.py)
INPUTS = {
    "prepare": {},
    "train": {"data": config_mod.PREPARED},
    "evaluate": {"data": config_mod.PREPARED, "model": config_mod.MODELS},
    "sweep": {"data": config_mod.PREPARED},
}
OUTPUTS = {
    "prepare": {"out": config_mod.PREPARED},
    "train": {"out": config_mod.MODELS, "plots": config_mod.PLOTS},
    "evaluate": {"metrics": config_mod.METRICS, "plots": config_mod.PLOTS},
    "sweep": {"out": config_mod.SWEEP_RESULTS},
}


# --- the walk over imports --------------------------------------------------------------------


def module_file(root: Path, name: str) -> Path | None:
    """The file of module ``name`` under ``root`` (a package's ``__init__.py``), or None."""
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_names(path: Path, name: str) -> Iterator[str]:
    """Every module name ``path`` (module ``name``) may import: ``import a.b`` gives ``a.b``;
    ``from a import b`` gives ``a`` and ``a.b`` (kept only if that is a module); relative
    imports are resolved against the file's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def closure(root: Path, entry: str, packages: Iterable[str] = PACKAGES) -> set[str]:
    """The project files (relative POSIX paths) that ``python -m entry`` imports, transitively,
    following only modules of ``packages``. Importing ``a.b.c`` imports ``a/__init__.py`` and
    ``a/b/__init__.py`` first; ``-m`` on a package runs its ``__main__.py``."""
    packages = tuple(packages)
    start = [entry]
    if (root.joinpath(*entry.split(".")) / "__main__.py").is_file():
        start.append(f"{entry}.__main__")
    todo, seen, files = start, set(), set()
    while todo:
        name = todo.pop()
        if not name or name in seen or name.split(".")[0] not in packages:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = module_file(root, name)
        if path is not None:
            files.add(path.relative_to(root).as_posix())
            todo.extend(imported_names(path, name))
    return files


def covers(dep: str, file: str) -> bool:
    """A dep covers a file if it is that file or a folder above it."""
    return file == dep or file.startswith(dep.rstrip("/") + "/")


def uncovered(files: Iterable[str], deps: Iterable[str]) -> list[str]:
    deps = list(deps)
    return sorted(f for f in files if not any(covers(d, f) for d in deps))


def unused(deps: Iterable[str], files: Iterable[str], packages: Iterable[str] = PACKAGES) -> list:
    """Source deps (under ``packages``) that cover none of ``files``: a folder or file the stage
    never imports, which would re-run it for nothing."""
    files = list(files)
    source = [d for d in deps if d.split("/")[0] in tuple(packages)]
    return [d for d in source if not any(covers(d, f) for f in files)]


# --- dvc.yaml, read the way DVC reads it --------------------------------------------------------


def resolve_templates(value: Any, params: dict[str, Any]) -> Any:
    """``${a.b}`` replaced from params.yaml, as DVC's templating does."""

    def lookup(match: re.Match) -> str:
        node: Any = params
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)

    if isinstance(value, str):
        return re.sub(r"\$\{\s*([\w.]+)\s*\}", lookup, value)
    if isinstance(value, list):
        return [resolve_templates(v, params) for v in value]
    if isinstance(value, dict):
        return {
            resolve_templates(k, params): resolve_templates(v, params) for k, v in value.items()
        }
    return value


def dvc_stages(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    params = yaml.safe_load((root / "params.yaml").read_text())
    return resolve_templates(yaml.safe_load((root / "dvc.yaml").read_text()), params)["stages"]


def paths(entries: Iterable[Any]) -> list[str]:
    """The paths of a deps/outs/metrics/plots list (``- path`` or ``- path: {options}``)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def entry_module(cmd: str) -> str:
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-m"], f"{cmd!r}: a stage runs `python -m <module>`"
    return words[2]


STAGES = dvc_stages()


# --- the walk itself, on a package made for it ------------------------------------------------


def test_the_walk_follows_every_kind_of_import_and_a_gap_is_reported(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/__main__.py": "from pkg import cli\ncli.run()\n",
        "pkg/cli.py": "import os\n\ndef run():\n    from .sub import deep\n    deep.go()\n",
        "pkg/sub/__init__.py": "from . import helper as _h\n",
        "pkg/sub/helper.py": "",
        "pkg/sub/deep.py": "import pkg.leaf\nfrom ..leaf import NAME\nimport numpy\n",
        "pkg/leaf.py": "NAME = 1\nfrom other.thing import x\n",
        "pkg/unused.py": "",
        "other/__init__.py": "",
        "other/thing.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = closure(tmp_path, "pkg", packages=("pkg",))
    assert found == set(files) - {"pkg/unused.py", "other/__init__.py", "other/thing.py"}
    assert closure(tmp_path, "pkg.leaf", packages=("pkg",)) == {"pkg/__init__.py", "pkg/leaf.py"}
    # a stage that lists the package folder but forgot the nested one's lazy import
    deps = [
        "pkg/__init__.py",
        "pkg/__main__.py",
        "pkg/cli.py",
        "pkg/sub/__init__.py",
        "pkg/leaf.py",
    ]
    assert uncovered(found, deps) == ["pkg/sub/deep.py", "pkg/sub/helper.py"]
    assert uncovered(found, ["pkg"]) == []
    assert unused(["pkg/sub", "pkg/unused.py", "data/x"], found, packages=("pkg",)) == [
        "pkg/unused.py"
    ]


# --- dvc.yaml against the code ------------------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_depends_on_every_file_it_imports_and_on_no_other_package(stage):
    spec = STAGES[stage]
    files = closure(ROOT, entry_module(spec["cmd"]))
    deps = paths(spec.get("deps"))
    missing = uncovered(files, deps)
    assert not missing, f"stage {stage!r} imports files its deps in dvc.yaml miss: {missing}"
    extra = unused(deps, files)
    assert not extra, f"stage {stage!r} depends on {extra} in dvc.yaml but never imports them"


def test_the_stages_are_the_expected_ones():
    assert set(STAGES) == set(INPUTS) == set(OUTPUTS)
    assert "sweeps" not in paths(STAGES["evaluate"]["deps"])


def sections_module(stage: str) -> Any:
    return importlib.import_module(SECTION_MODULES.get(stage) or entry_module(STAGES[stage]["cmd"]))


def attribute_reads(files: Iterable[str], section: str) -> set[str]:
    """``key`` of every ``<expr>.<section>.<key>`` in ``files`` (``cfg.evaluate.steps``)."""
    keys = set()
    for f in files:
        for node in ast.walk(ast.parse((ROOT / f).read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == section
            ):
                keys.add(node.attr)
    return keys


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_declares_exactly_the_params_it_loads(stage):
    """dvc.yaml's ``params`` name the module's SECTIONS (whole, or some of their keys); where
    only some keys are named, the stage's code reads no other key of that section."""
    declared = [p for p in STAGES[stage].get("params", []) if isinstance(p, str)]
    loaded = tuple(sections_module(stage).SECTIONS)
    assert {p.split(".")[0] for p in declared} == set(loaded), (
        f"stage {stage!r}: dvc.yaml params {declared} vs the sections it loads {loaded}"
    )
    files = closure(ROOT, entry_module(STAGES[stage]["cmd"]))
    for section in loaded:
        if section in declared:
            continue
        keys = {p.partition(".")[2] for p in declared if p.startswith(f"{section}.")}
        read = attribute_reads(files, section)
        assert read <= keys, (
            f"stage {stage!r} reads {section}.{sorted(read - keys)} but dvc.yaml declares only "
            f"{sorted(keys)}"
        )


def test_the_shipped_params_hold_every_declared_param():
    """DVC refuses to run a stage whose declared params are missing from params.yaml."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stage, spec in STAGES.items():
        for name in spec.get("params", []):
            section, _, key = name.partition(".")
            assert section in params and (not key or key in params[section]), (stage, name)


def test_train_declares_the_evaluate_keys_it_reads():
    declared = STAGES["train"]["params"]
    assert "evaluate.steps" in declared and "evaluate.grid" in declared
    assert "evaluate" not in declared and "mlflow" in declared


# --- loading only some sections -----------------------------------------------------------------


def broken_sweep_params(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sweep"]["space"]["model.rnak"] = {"choice": [2, 4]}  # a typo in the sweep's space
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_broken_sweep_space_stops_the_sweep_but_not_the_other_stages(tmp_path):
    path = broken_sweep_params(tmp_path)
    for stage in ("prepare", "train", "evaluate"):
        cfg = load(path, sections_module(stage).SECTIONS)
        assert cfg.loaded_sections == sections_module(stage).SECTIONS
    cfg = load(path, sections_module("prepare").SECTIONS)
    assert cfg.data.name == "digits"
    with pytest.raises(UnreadSectionError, match=r"sweep\.space .*add 'sweep' to the stage's"):
        cfg.sweep.space  # noqa: B018 (the read is the test)
    with pytest.raises(ConfigError, match=r"sweep\.space\.model\.rnak: not a tunable key"):
        load(path, sections_module("sweep").SECTIONS)
    with pytest.raises(ConfigError, match="not a tunable key"):
        load(path)  # everything, as before


def test_unread_sections_are_skipped_not_defaulted():
    cfg = parse({"data": {"name": "moons"}, "model": {"rank": "bad"}}, ("data",))
    assert cfg.loaded_sections == ("data",)
    assert set(cfg.to_flat_dict()) == {f"data.{k}" for k in vars(config_mod.DataConfig())}
    with pytest.raises(UnreadSectionError, match=r"model\.rank was read"):
        cfg.model.rank  # noqa: B018
    with pytest.raises(ConfigError, match="unknown section 'sweeep'"):
        parse({"sweeep": {}}, ("data",))  # unknown section names are refused all the same
    with pytest.raises(ValueError, match="load those sections too"):
        parse({}, ("sweep",))  # sweep.space is checked against model and train
    with pytest.raises(ValueError, match="unknown params section"):
        parse({}, ("data", "models"))


# --- one source for paths -----------------------------------------------------------------------


class _Parsed(Exception):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args_ = args


def argparse_defaults(stage: str, monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The stage's parsed arguments with no flags, without running it."""
    real = argparse.ArgumentParser.parse_args

    def stop(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Parsed) as parsed:
        sections_module(stage).main([])
    return parsed.value.args_


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_paths_are_the_stages_default_paths(stage, monkeypatch):
    spec = STAGES[stage]
    defaults = vars(argparse_defaults(stage, monkeypatch))
    flags = {**INPUTS[stage], **OUTPUTS[stage]}
    assert {k: defaults[k] for k in flags} == flags, f"stage {stage!r}: argparse defaults"
    assert defaults["params"] == str(config_mod.PARAMS_FILE)
    words = shlex.split(spec["cmd"])
    assert not any(w.lstrip("-") in flags for w in words if w.startswith("--")), (
        f"stage {stage!r}: its cmd overrides a default path ({spec['cmd']}); change the default"
    )
    written = [
        *paths(spec.get("outs")),
        *paths(spec.get("metrics")),
        *paths(spec.get("plots")),
    ]
    outs = OUTPUTS[stage].values()
    assert written and all(any(covers(o, w) for o in outs) for w in written), (stage, written)
    assert all(any(covers(o, w) for w in written) for o in outs), (stage, written)
    read = [d for d in paths(spec.get("deps")) if d.split("/")[0] not in PACKAGES]
    ins = INPUTS[stage].values()
    assert all(any(covers(i, r) for r in read) for i in ins), (stage, read)


def test_top_level_plots_are_stage_outputs():
    written = {
        p
        for spec in STAGES.values()
        for key in ("outs", "metrics", "plots")
        for p in paths(spec.get(key))
    }
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert set(paths(dvc.get("plots"))) <= written


# --- data.path, a dependency of prepare ---------------------------------------------------------


def test_data_path_is_a_dependency_of_prepare_with_a_tracked_default_folder():
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "${data.path}" in raw["stages"]["prepare"]["deps"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["data"]["path"] == config_mod.RAW_DATA == config_mod.DataConfig().path
    assert (ROOT / config_mod.RAW_DATA / "README.md").is_file()

    def ignored(path: str) -> bool:
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        return r.returncode == 0

    assert not ignored(f"{config_mod.RAW_DATA}/README.md")  # committed with the project
    assert ignored(f"{config_mod.PREPARED}/train.parquet")  # a DVC output, never committed
    with pytest.raises(ConfigError, match=r"data\.name is 'path': set data\.path"):
        parse({"data": {"name": "path", "path": ""}}, ("data",))


def test_folder_deps_ignore_python_bytecode_caches():
    ignored = (ROOT / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored  # else a stage importing more would re-run the others


@pytest.mark.slow
def test_dvc_sees_a_change_in_the_data_even_outside_the_project(tmp_path):
    proj, outside = tmp_path / "proj", tmp_path / "outside"
    proj.mkdir()
    outside.mkdir()
    copy_project(proj)
    data = outside / "points.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(60, 2)).astype(np.float32))
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["data"] |= {"name": "path", "path": str(data)}  # absolute, outside the repository
    (proj / "params.yaml").write_text(yaml.safe_dump(raw))
    dvc = str(BIN / "dvc")
    sh([dvc, "repro", "prepare"], proj, timeout=180)
    assert "up to date" in sh([dvc, "status", "prepare"], proj, timeout=60).stdout
    cache = proj / "pipelines/training/__pycache__"  # as if train had imported its modules
    cache.mkdir(exist_ok=True)
    (cache / "driver.cpython-311.pyc").write_bytes(b"not source")
    assert "up to date" in sh([dvc, "status", "prepare"], proj, timeout=60).stdout  # .dvcignore
    np.savez(data, x=rng.normal(size=(70, 2)).astype(np.float32))
    status = sh([dvc, "status", "prepare"], proj, timeout=60).stdout
    assert "modified" in status and str(data) in status, status
