"""Rerun one notebook through papermill: ``sae-med notebook NN CONFIG [k=v ...]``.

The notebooks are jupytext percent files (``notebooks/NN_name.py``) with one
``parameters`` cell of plain literals; :func:`run_notebook` checks the parameters given
against that cell (names and types) before any work, then executes the notebook with
:func:`sae_med.report.book.execute_notebook` (the book's own route) into an ``.ipynb``. For plain
papermill, ``jupytext --to ipynb`` makes the paired ``.ipynb``; papermill's ``-p`` passes
every value as a string or number, so :func:`notebook_parameters` also reads
``overrides`` given as a string (``'["train.lr=2e-3"]'`` or ``"train.lr=2e-3 name=x"``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sae_med.layout import NOTEBOOKS_DIR
from sae_med.report.book import (
    PROJECT_ROOT,
    ensure_kernel,
    execute_notebook,
    list_notebooks,
    read_notebook,
)
from sae_med.report.parameters import (
    NotebookParameterError,
    check_values,
    literal_assignments,
    notebook_config,
)

log = logging.getLogger(__name__)


def find_notebook(ref: str, notebooks_dir: Path) -> Path:
    """The notebook ``ref`` names: its number (``3``, ``03``), stem (``03_fidelity``) or
    path."""

    found = list_notebooks(notebooks_dir)
    path = Path(ref)
    if path.suffix == ".py" and path.is_file():
        return path
    key = ref.zfill(2) if ref.isdigit() else ref
    hits = [p for p in found if p.stem == key or p.stem.split("_", 1)[0] == key]
    if len(hits) != 1:
        raise NotebookParameterError(
            f"no notebook {ref!r}; give a number or name: "
            f"{', '.join(p.stem for p in found)}")
    return hits[0]


def declared_parameters(source: Path) -> dict[str, Any]:
    """Name -> default value of the notebook's ``parameters`` cell (plain literals)."""
    # deferred: jupytext is needed only by the book build
    import jupytext

    cells = [c for c in jupytext.read(source).cells
             if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{source} has {len(cells)} cells tagged 'parameters'; it needs one")
    return literal_assignments(cells[0].source)


def check_parameters(source: Path, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against the notebook's declared parameters
    (:func:`~sae_med.report.parameters.check_values`)."""
    return check_values(declared_parameters(source), given, source.name)


def parse_parameter(raw: str) -> Any:
    """A ``-p NAME VALUE`` value: YAML (``3`` an int, ``[a, b]`` a list), else the text."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def run_notebook(ref: str, config: str, overrides: Sequence[str] = (), out: Path | None = None,
                 run_name: str = "", extra: Mapping[str, Any] | None = None,
                 notebooks_dir: Path | None = None, progress: bool = False) -> Path:
    """Execute notebook ``ref`` with ``config`` + ``overrides`` (and any ``extra``
    parameters of its own) through papermill; returns the executed ``.ipynb``.

    Args:
        ref: the notebook's number, name or path (:func:`find_notebook`).
        config: YAML config path, relative to the current directory (where it runs).
        overrides: ``section.field=value`` config overrides.
        out: the executed notebook (default ``{run_path}/notebooks/{name}.ipynb``).
        run_name: optional run name (replaces the config's ``name``).
        extra: values for the notebook's other parameters (checked by name and type).
        notebooks_dir: folder of ``NN_*.py`` notebooks (default: the project's).
        progress: papermill's per-cell progress bar.
    """

    source = find_notebook(ref, Path(notebooks_dir or PROJECT_ROOT / "notebooks"))
    params = check_parameters(source, {"config": str(config), "overrides": list(overrides),
                                       "run_name": run_name, **(extra or {})})
    cfg = notebook_config(config, list(overrides), run_name)  # validate before any work
    out = Path(out or cfg.run_path / NOTEBOOKS_DIR / f"{source.stem}.ipynb")
    execute_notebook(source, out, params, ensure_kernel(), Path.cwd(), progress)
    return out


def pair_notebooks(notebooks_dir: Path | None = None) -> list[Path]:
    """Write ``NN_name.ipynb`` beside every ``NN_name.py`` (what ``jupytext --to ipynb``
    writes, with the kernel set as :func:`sae_med.report.book.read_notebook` sets it) and register
    the ``sae-med`` kernel they name: the plain papermill route."""
    # deferred: nbformat is needed only by the book build
    import nbformat

    kernel = ensure_kernel()
    out = []
    for source in list_notebooks(Path(notebooks_dir or PROJECT_ROOT / "notebooks")):
        target = source.with_suffix(".ipynb")
        nbformat.write(read_notebook(source, kernel), target)
        out.append(target)
    return out


if __name__ == "__main__":  # make notebooks
    for path in pair_notebooks():
        print(f"paired {path}")
