"""The README and docs/ say only what is true.

- Every fenced block marked ``<!-- runnable -->`` on the line before it runs (``python`` blocks in
  a fresh interpreter, shell blocks in bash with the venv first on PATH), in the project root.
  Only blocks that take seconds are marked.
- Every ``python -m X`` they name is an importable module; every ``--flag`` given after
  ``python -m X`` (or ``linearizer SUB``) is in that command's usage (``--help``, one process per
  distinct command); every ``params.yaml`` key they name in backticks (``model.rank``,
  ``train.use_gpu: true``) or set with ``dvc exp run -S`` is in the schema, and every YAML block is
  a valid ``params.yaml`` fragment; every repository path they name in backticks exists or is an
  output a run writes (``dvc.yaml``'s outputs, what ``.gitignore`` keeps out of git, the user's
  ``data/raw/``); every relative link resolves.
- The metrics the README quotes in its table are those of the default run's ``metrics.json``,
  rounded as printed: ``docs/default_run.json``, a copy committed with the README's pictures.

``test_each_check_catches_a_wrong_name`` feeds every check a wrong name, so none passes vacuously.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from pipelines.config import parse

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = "<!-- runnable -->"
OUR_PACKAGES = ("lincore", "pipelines", "sweeps", "benchmarks")
SECTIONS = ("data", "model", "train", "evaluate", "mlflow", "sweep")
FILE_SUFFIXES = {"py", "pt", "json", "yaml", "yml", "csv", "png", "md", "db", "parquet", "toml"}
USER_DATA = "data/raw/"
"""The user's data folder: the docs name files a user puts there, which the repository lacks."""
SHELL_LANGS = ("bash", "sh", "shell", "console", "")
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```[ \t]*$", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
PYTHON_M = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)(.*)")
LINEARIZER_CLI = re.compile(r"(?:^|[\s(])linearizer\s+([a-z][\w-]*)(.*)")
PARAM_KEY = re.compile(r"^(" + "|".join(SECTIONS) + r")\.([A-Za-z_]\w*)(?:$|:\s|=)")
SET_PARAM = re.compile(r"(?:^|\s)-S\s+([\w.]+)=(\S+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
METRIC_ROW = re.compile(r"^\|\s*`(\w+)`\s*\|\s*([\d,]+(?:\.\d+)?)", re.M)


@dataclass(frozen=True)
class Block:
    where: str  # file:line
    lang: str
    code: str
    runnable: bool


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        line = text.count("\n", 0, m.start()) + 1
        out.append(Block(f"{rel(path)}:{line}", m.group(1), m.group(2), before == RUNNABLE))
    return out


def prose(text: str) -> str:
    """``text`` without its fenced blocks."""
    return FENCE.sub("", text)


def inline_spans(text: str) -> list[str]:
    return [s.strip() for s in INLINE.findall(prose(text))]


def command_lines(text: str) -> list[str]:
    """Shell commands: the lines of shell blocks (``\\`` continuations joined) and every inline
    code span."""
    lines = []
    for m in FENCE.finditer(text):
        if m.group(1) in SHELL_LANGS:
            lines += m.group(2).replace("\\\n", " ").splitlines()
    return lines + inline_spans(text)


def simple_commands(line: str) -> list[str]:
    """The simple commands of a shell line: split at ``&&``, ``||``, ``|`` and ``;``, without
    its comment."""
    return re.split(r"&&|\|\||\||;", re.split(r"(?:^|\s)#", line, maxsplit=1)[0])


def flags(rest: str) -> set[str]:
    try:
        words = shlex.split(rest)
    except ValueError:
        words = rest.split()
    return {w.split("=", 1)[0] for w in words if re.match(r"^--[\w-]+", w)}


# ---- what the docs name ---------------------------------------------------------------------


def modules_named(text: str) -> set[str]:
    return {
        m.group(1).rstrip(".")
        for line in text.splitlines()
        for command in simple_commands(line)
        if (m := PYTHON_M.search(command))
    }


def commands_named(text: str) -> dict[tuple[str, ...], set[str]]:
    """``{(module, *subcommand): flags}`` of our own commands in ``text``."""
    found: dict[tuple[str, ...], set[str]] = {}
    for command in (c for line in command_lines(text) for c in simple_commands(line)):
        if m := PYTHON_M.search(command):
            module = m.group(1).rstrip(".")
            if module.split(".")[0] in OUR_PACKAGES:
                found.setdefault((module,), set()).update(flags(m.group(2)))
        elif m := LINEARIZER_CLI.search(command):
            key = ("pipelines.commands.cli", m.group(1))
            found.setdefault(key, set()).update(flags(m.group(2)))
    return found


def keys_named(text: str) -> set[str]:
    keys = {f"{m.group(1)}.{m.group(2)}" for s in inline_spans(text) if (m := PARAM_KEY.match(s))}
    keys = {k for k in keys if k.rsplit(".", 1)[1] not in FILE_SUFFIXES}  # model.pt: a file
    return keys | {m.group(1) for line in command_lines(text) for m in SET_PARAM.finditer(line)}


def expand_braces(word: str) -> list[str]:
    """``plots/loss.{csv,png}`` -> ``plots/loss.csv``, ``plots/loss.png``."""
    m = re.search(r"\{([^{}]*)\}", word)
    if not m:
        return [word]
    return [
        w
        for part in m.group(1).split(",")
        for w in expand_braces(word[: m.start()] + part + word[m.end() :])
    ]


def paths_named(text: str) -> set[str]:
    """Backticked words that are paths of this repository: a ``/`` in them and a first part that
    is a top-level name of the project (``1/T`` or ``cat/`` are not)."""
    tops = {p.name for p in ROOT.iterdir()} | generated_roots()
    out = set()
    for span in inline_spans(text):
        if " " in span or "/" not in span or "://" in span or span[0] in "/~$":
            continue
        if re.search(r"[<>*:@]", span):
            continue
        for word in expand_braces(span):
            if word.split("/")[0] in tops:
                out.add(word.rstrip("/"))
    return out


# ---- what exists ----------------------------------------------------------------------------


@cache
def generated() -> frozenset[str]:
    """Paths a run writes: ``dvc.yaml``'s outs, metrics and plots, and ``.gitignore``'s entries."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = set()
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                outs.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    outs |= {line.strip().strip("/") for line in ignored if line.strip() and line[0] != "#"}
    return frozenset(outs)


def generated_roots() -> set[str]:
    return {p.split("/")[0] for p in generated() if "*" not in p}


@cache
def in_repository() -> frozenset[str]:
    """The files git tracks and the folders that hold them: what a fresh clone has (a run's
    outputs lying in this working tree do not count, or the check would pass here and fail in
    CI)."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    folders = {"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)}
    return frozenset(files) | frozenset(folders) | {".git"}


def path_exists(word: str) -> bool:
    word = word.rstrip("/")
    if word in in_repository() or word.startswith(USER_DATA):
        return True
    return any(
        word == g or word.startswith(g + "/") or g.startswith(word + "/")
        for g in generated()
        if "*" not in g
    )


def missing_paths(text: str) -> list[str]:
    return sorted(w for w in paths_named(text) if not path_exists(w))


def missing_links(text: str, base: Path) -> list[str]:
    out = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (base / target.split("#", 1)[0]).exists():
            out.append(target)
    return out


def missing_modules(text: str) -> list[str]:
    return sorted(m for m in modules_named(text) if importlib.util.find_spec(m) is None)


@cache
def schema_keys() -> frozenset[str]:
    return frozenset(parse({}).to_flat_dict())


def unknown_keys(text: str) -> list[str]:
    return sorted(keys_named(text) - schema_keys())


def invalid_settings(text: str) -> list[str]:
    """YAML blocks and ``-S key=value`` settings that ``params.yaml`` would refuse."""
    fragments = [
        (f"line {text.count(chr(10), 0, m.start()) + 1}", yaml.safe_load(m.group(2)))
        for m in FENCE.finditer(text)
        if m.group(1) == "yaml"
    ]
    for line in command_lines(text):
        for m in SET_PARAM.finditer(line):
            section, key = m.group(1).split(".", 1)
            fragments.append((m.group(0).strip(), {section: {key: yaml.safe_load(m.group(2))}}))
    out = []
    for where, fragment in fragments:
        try:
            parse(fragment)
        except Exception as err:  # a ConfigError names the key; anything else is wrong too
            out.append(f"{where}: {err}")
    return out


@cache
def usage(command: tuple[str, ...]) -> str:
    """The usage line of ``python -m module [subcommand] --help``: every option it takes."""
    module, *sub = command
    done = subprocess.run(
        [sys.executable, "-m", module, *sub, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{' '.join(command)} --help failed:\n{done.stderr[-2000:]}"
    return done.stdout.split("\n\n", 1)[0]


def unknown_flags(command: tuple[str, ...], wanted: set[str]) -> list[str]:
    text = usage(command)
    return sorted(f for f in wanted if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))


def metric_mismatches(text: str, metrics: dict) -> tuple[int, list[str]]:
    """``(rows checked, problems)``: each README table row ``| `key` | number ... |`` whose number
    is not ``metrics.json``'s value rounded to the digits shown."""
    rows, out = 0, []
    for key, shown in METRIC_ROW.findall(text):
        rows += 1
        if key not in metrics:
            out.append(f"{key}: not in metrics.json")
            continue
        value = float(shown.replace(",", ""))
        decimals = len(shown.split(".", 1)[1]) if "." in shown else 0
        if abs(value - float(metrics[key])) > 0.5 * 10**-decimals * (1 + 1e-9):
            out.append(f"{key}: README {shown}, metrics.json {metrics[key]}")
    return rows, out


# ---- the tests ------------------------------------------------------------------------------

ALL_TEXT = {rel(p): p.read_text() for p in DOC_FILES}
RUNNABLE_BLOCKS = [b for p in DOC_FILES for b in blocks(p) if b.runnable]
COMMANDS: dict[tuple[str, ...], set[str]] = {}
for _text in ALL_TEXT.values():
    for _command, _flags in commands_named(_text).items():
        COMMANDS.setdefault(_command, set()).update(_flags)
# a module without flags is checked by find_spec alone; a subcommand needs its --help
COMMANDS = {c: f for c, f in COMMANDS.items() if f or len(c) > 1}


def test_the_docs_exist_and_mark_runnable_blocks():
    assert {"README.md", "docs/design.md", "docs/data.md", "docs/sweeps.md"} <= set(ALL_TEXT)
    assert {"docs/cluster.md", "docs/benchmarks.md"} <= set(ALL_TEXT)
    assert len(RUNNABLE_BLOCKS) >= 3 and any(b.where.startswith("README") for b in RUNNABLE_BLOCKS)
    for name, text in ALL_TEXT.items():  # a marker not followed by a fence marks nothing
        for m in re.finditer(re.escape(RUNNABLE), text):
            assert text[m.end() :].lstrip(" ").startswith("\n```"), f"{name}: stray marker"


@pytest.mark.parametrize("block", RUNNABLE_BLOCKS, ids=lambda b: b.where)
def test_runnable_block_runs(block):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if block.lang == "python":
        argv = [sys.executable, "-c", block.code]
    else:
        assert block.lang in SHELL_LANGS, f"{block.where}: cannot run a {block.lang!r} block"
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"{block.where} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    )


@pytest.mark.parametrize("name", sorted(ALL_TEXT))
def test_named_modules_keys_paths_and_links_exist(name):
    text = ALL_TEXT[name]
    assert not missing_modules(text), "no such module"
    assert not unknown_keys(text), (
        f"not in the params.yaml schema; allowed: {sorted(schema_keys())}"
    )
    assert not invalid_settings(text)
    assert not missing_paths(text), "not in the repository, nor written by a run"
    assert not missing_links(text, (ROOT / name).parent)


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=" ".join)
def test_named_flags_exist(command):
    assert not unknown_flags(command, COMMANDS[command]), f"not in `{' '.join(command)} --help`"


def test_readme_quotes_the_default_runs_metrics():
    metrics = json.loads((ROOT / "docs" / "default_run.json").read_text())
    rows, problems = metric_mismatches(ALL_TEXT["README.md"], metrics)
    assert rows >= 5, "the README's table of the default run's metrics is gone"
    assert not problems


def test_each_check_catches_a_wrong_name(tmp_path):
    """Every check above, fed a wrong name next to a right one, reports the wrong one only."""
    assert missing_modules("python -m lincore.demo; python -m lincore.nodemo") == ["lincore.nodemo"]
    assert unknown_keys(
        "`model.rank`, `model.rnak`; `dvc exp run -S train.lr=1 -S train.lrr=1`"
    ) == [
        "model.rnak",
        "train.lrr",
    ]
    assert (
        unknown_keys("`model.pt` and `train.py` are files, `mlflow.pyfunc.load_model` code") == []
    )
    assert (
        len(invalid_settings("```yaml\nmodel: {rank: 4}\n```\n```yaml\nmodel: {rnak: 4}\n```")) == 1
    )
    assert len(invalid_settings("`dvc exp run -S train.epochs=ten`")) == 1
    assert missing_paths("`models/model.pt`, `pipelines/model/sampler.py`, `data/raw/mine/`") == []
    assert missing_paths("`lincore/sampling.py`, `lincore/sampler.py`, `1/T`, `cat/`") == [
        "lincore/sampler.py"
    ]
    assert missing_paths("`plots/loss.{csv,pgn}`") == ["plots/loss.pgn"]
    (tmp_path / "there.md").write_text("")
    assert missing_links("[a](there.md#x) [b](gone.md) [c](https://x.org)", tmp_path) == ["gone.md"]
    named = commands_named(
        "`python -m lincore.demo --steps 3 --stpes 3 # --seed` `linearizer x --n`"
    )
    assert named == {
        ("lincore.demo",): {"--steps", "--stpes"},
        ("pipelines.commands.cli", "x"): {"--n"},
    }
    assert unknown_flags(("lincore.demo",), {"--steps", "--stpes"}) == ["--stpes"]
    table = "| `mmd` | 0.150 | x |\n| `mmd` | 0.160 | x |\n| `nope` | 1 | x |"
    assert metric_mismatches(table, {"mmd": 0.1497}) == (
        3,
        ["mmd: README 0.160, metrics.json 0.1497", "nope: not in metrics.json"],
    )
