"""The package's imports run one way: no circles, no arrow that breaks LAYOUT.md's rules.

Every ``import`` in ``sae_med/`` is read with :mod:`ast` (function-local ones included,
since they run; ``if TYPE_CHECKING:`` blocks excluded, since they never do) and each module
is placed in its folder's room. A room may import only the rooms listed for it below.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sae_med"

FLOOR = {"config", "artifacts", "layout", "runtime", "__init__"}
"""Modules at the package's top level that everything may import."""

ALLOWED: dict[str, set[str]] = {
    "floor": {"floor"},
    "corpora": {"floor"},  # a text source knows no model
    "lm": {"floor"},  # the language model runs forwards; losses live above it
    "sae": {"floor"},  # an SAE knows nothing of its trainer
    "cache": {"floor", "corpora", "lm"},
    "train": {"floor", "cache", "sae"},  # batches, not language models
    "measure": {"floor", "corpora", "lm", "cache", "sae"},
    "interpret": {"floor", "measure", "corpora", "lm", "cache", "sae"},
    "report": {"floor", "measure", "interpret", "corpora", "lm", "cache", "sae", "train"},
    "experiment": {"floor", "report", "measure", "interpret", "corpora", "lm", "cache",
                   "sae", "train"},
    "cli": {"floor", "experiment", "report", "measure", "interpret", "corpora", "lm",
            "cache", "sae", "train"},
}
"""Room -> rooms it may import (its own room is always allowed)."""

ALSO_ALLOWED: dict[str, dict[str, str]] = {
    "corpora": {"sae_med.lm.files": "the mixes are weighted by Gemma-3 token counts: the "
                "registry reads the embedded model's tokenizer files, never a model"},
    "train": {"sae_med.measure.metrics": "pure functions of tensors: training logs FVE by "
              "the one definition the evaluation uses"},
}
"""Room -> single modules of another room it may import, each with the reason."""

FLOOR_RULES: dict[str, set[str]] = {
    "config": {"__init__"},  # the config is a value: it knows no registry
    "artifacts": {"__init__"},
    "layout": {"config", "__init__"},
    "runtime": {"artifacts", "config", "__init__"},
}
"""Floor module -> the floor modules it may import."""


class Import(NamedTuple):
    """One import of a ``sae_med`` module by another."""

    importer: str
    imported: str
    line: int
    local: bool
    """Inside a function (runs when called, not when the module loads)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The sae_med module an import names (``from a.b import c``: ``a.b.c`` if that is a
    module, else ``a.b``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    local = {n.lineno for f in ast.walk(tree)
             if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            if not t.startswith("sae_med") or node.lineno in skip:
                continue
            mod = _resolve(t, known)
            if mod and mod != name and mod != "sae_med":
                out.append(Import(name, mod, node.lineno, node.lineno in local))
    return out


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in FLOOR or module == "sae_med":
        return "floor"
    if len(parts) == 2 and parts[1] in ("experiment", "cli"):
        return parts[1]
    return parts[1]


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    known = modules()
    return [i for n, p in known.items() for i in imports_of(n, p, known)]


def test_every_module_lives_in_a_room():
    rooms = {room(m) for m in modules()}
    assert rooms <= set(ALLOWED), rooms - set(ALLOWED)


def test_no_import_breaks_the_rooms_rules(graph):
    bad = [f"{i.importer}:{i.line} imports {i.imported}" for i in graph
           if room(i.imported) != room(i.importer)
           and room(i.imported) not in ALLOWED[room(i.importer)]
           and i.imported not in ALSO_ALLOWED.get(room(i.importer), {})]
    assert not bad, "imports against LAYOUT.md:\n" + "\n".join(bad)


def test_the_floor_imports_only_what_lies_under_it(graph):
    bad = [f"{i.importer}:{i.line} imports {i.imported}" for i in graph
           if room(i.importer) == "floor" and i.importer != "sae_med"
           and i.imported.rpartition(".")[2]
           not in FLOOR_RULES[i.importer.rpartition(".")[2]]]
    assert not bad, "\n".join(bad)


def test_the_exceptions_import_only_the_floor(graph):
    """A module another room may import by exception imports nothing above the floor, so
    the exception lets in nothing else."""
    allowed = {m for mods in ALSO_ALLOWED.values() for m in mods}
    bad = [f"{i.importer}:{i.line} imports {i.imported}" for i in graph
           if i.importer in allowed and room(i.imported) != "floor"]
    assert not bad, "\n".join(bad)


STAGE_NAMES = {"sae_med.lm.load": {"load_model"}, "sae_med.cache.activations": {"build_cache"},
               "sae_med.train.sweep": {"train_saes"}}
"""Module -> the names in it that run a stage: load a model, build a cache, train."""


def test_measurement_reports_and_interpretation_run_no_stage():
    """They are handed results, SAEs, caches and models (LAYOUT.md): none imports what
    loads a model, builds a cache or trains."""
    bad = []
    for name, path in modules().items():
        if room(name) not in ("measure", "interpret", "report"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in STAGE_NAMES:
                bad += [f"{name}:{node.lineno} imports {node.module}.{a.name}"
                        for a in node.names if a.name in STAGE_NAMES[node.module]]
    assert not bad, "\n".join(bad)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``edges`` (its nodes in order, first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_circle_between_modules(graph):
    edges: dict[str, set[str]] = {}
    for i in graph:
        edges.setdefault(i.importer, set()).add(i.imported)
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_no_circle_between_rooms(graph):
    edges: dict[str, set[str]] = {}
    for i in graph:
        if room(i.importer) != room(i.imported):
            edges.setdefault(room(i.importer), set()).add(room(i.imported))
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_the_cycle_finder_finds_a_circle_and_only_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_local_imports_say_why(graph):
    """A function-local import breaks a real circle or defers a heavy optional dependency,
    and a comment on its line (or the line above) says which."""
    bad = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for line in local_import_lines(ast.parse(path.read_text())):
            if not _commented(lines, line):
                bad.append(f"{name}:{line}: {lines[line - 1].strip()}")
    assert not bad, "function-local imports without a reason:\n" + "\n".join(bad)


def local_import_lines(tree: ast.Module) -> list[int]:
    return sorted({n.lineno for f in ast.walk(tree)
                   if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))})


def _commented(lines: list[str], line: int) -> bool:
    """A comment on the import's line or on the block of imports and comments above it."""
    i = line - 1
    while i >= 0:
        text = lines[i].strip()
        if "#" in text:
            return True
        if not text.startswith(("import ", "from ", ")")) and not text.endswith(",") \
                and i != line - 1:
            return False
        i -= 1
    return False


MAX_FUNCTION_LINES = 60


def test_no_function_is_longer_than_a_screen():
    long = [f"{name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, path in modules().items()
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def test_every_import_of_the_package_in_the_repository_resolves():
    """Notebooks, benchmarks, scripts and tests name the package's modules as they are
    (no old flat path survives a move)."""
    repo = PACKAGE.parent
    bad = []
    for path in sorted(p for d in ("notebooks", "benchmarks", "scripts", "tests")
                       for p in (repo / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0
                    and (node.module or "").startswith("sae_med")):
                continue
            module = importlib.import_module(node.module)
            bad += [f"{path.relative_to(repo)}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names if not hasattr(module, a.name)
                    and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert not bad, "\n".join(bad)


def test_no_two_test_files_share_a_name():
    """tests/ has no __init__.py, so pytest imports each test file by its base name: two
    files of one name in different folders stop the whole run at collection."""
    tests = Path(__file__).resolve().parent
    names = Counter(p.name for p in tests.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], sorted(
        str(p.relative_to(tests)) for p in tests.rglob("test_*.py") if names[p.name] > 1)


def test_the_readme_layout_table_names_every_module():
    """Each module of the package has a row in README.md's Layout table (`room/module`, or
    `name.py` for the floor and the face)."""
    table = (PACKAGE.parent / "README.md").read_text().split("## Layout", 1)[1]
    missing = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" and (
                   f"`{p.relative_to(PACKAGE).with_suffix('').as_posix()}`" not in table
                   if p.parent != PACKAGE else f"`{p.name}`" not in table)]
    assert not missing, f"README.md's Layout table has no row for {missing}"


def test_the_modules_scheduled_first_exist():
    """tests/conftest.py's SLOW_FIRST names test modules that are there (a renamed module
    would silently fall back to xdist's order)."""
    # by path: under xdist another folder's conftest.py may be the module named conftest
    spec = importlib.util.spec_from_file_location("tests_conftest",
                                                  PACKAGE.parent / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    SLOW_FIRST = module.SLOW_FIRST

    missing = [p for p in SLOW_FIRST if not (PACKAGE.parent / p).is_file()]
    assert not missing, f"SLOW_FIRST names modules that are not there: {missing}"
