"""Build the Jupyter Book: execute the notebooks, assemble the source, run jupyter-book.

``build_book`` executes every ``notebooks/NN_*.py`` (jupytext percent files) through
papermill with the config path, overrides and run name injected into its ``parameters``
cell, assembles the book source in a build folder and runs ``jupyter-book build`` (1.x, with
``execute_notebooks: "off"``: the notebooks are already executed). Layout::

    {build_dir}/{run name}/             book source, assembled here (never committed)
        _config.yml, _toc.yml, book/*.md
        notebooks/NN_*.ipynb            executed notebooks
        _build/html/index.html          the built book

The notebooks' own helpers are in :mod:`sae_med.report.notebook`; the Sphinx extension the book
loads is :mod:`sae_med.report.sphinx_assets`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sae_med.config import Config
from sae_med.report import citation, launch
from sae_med.report.notebook import PLOTLYJS_OUTPUT
from sae_med.report.parameters import notebook_config

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""Where ``_config.yml``, ``_toc.yml``, ``book/`` and ``notebooks/`` live (editable install)."""
KERNEL_NAME = "sae-med"
BOOK_FILES = ("_config.yml", "_toc.yml", "CITATION.cff")
LAUNCH_URLS = ("binderhub_url", "colab_url", "jupyterhub_url")
"""The ``launch_buttons`` links, which the theme can only build from a repository URL."""


class NotebookError(RuntimeError):
    """A notebook cell raised while the book was being built. ``cell`` is the cell's 1-based
    position in the source notebook (markdown cells included)."""

    def __init__(self, notebook: str, cell: int, source: str, ename: str, evalue: str,
                 output: Path):
        self.notebook, self.cell, self.source = notebook, cell, source
        self.ename, self.evalue, self.output = ename, evalue, output
        first = source.strip().splitlines()[0] if source.strip() else ""
        super().__init__(
            f"notebook {notebook} failed in cell {cell} ({first!r}): {ename}: {evalue}\n"
            f"cell source:\n{source}\npartially executed notebook: {output}")


class BookBuildError(RuntimeError):
    """``jupyter-book build`` failed (its log is in the message)."""


# --------------------------------------------------------------------------------------
# Building the book
# --------------------------------------------------------------------------------------

def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Register a Jupyter kernel running this interpreter inside ``sys.prefix`` (once)."""
    # deferred: jupyter_client is needed only to install the book's kernel
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        # Same bin/ folder = same environment (python and python3 are both fine).
        if spec.argv and Path(spec.argv[0]).parent == Path(sys.executable).parent:
            return name
    except NoSuchKernel:
        pass
    # deferred: ipykernel is needed only to install the book's kernel
    from ipykernel.kernelspec import install

    install(kernel_name=name, display_name="Python (sae-med)", prefix=sys.prefix)
    log.info("registered Jupyter kernel %r for %s", name, sys.executable)
    return name


def list_notebooks(notebooks_dir: Path) -> list[Path]:
    """The book's notebooks in pipeline order (``NN_name.py``)."""
    found = sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.py"))
    if not found:
        raise FileNotFoundError(f"no NN_*.py notebooks in {notebooks_dir}")
    return found


def read_notebook(source: Path, kernel_name: str = KERNEL_NAME) -> Any:
    """The jupytext notebook ``source`` as papermill reads it: checked for a ``parameters``
    cell, with the kernel and language set."""
    # deferred: jupytext is needed only by the book build
    import jupytext

    nb = jupytext.read(source)
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        raise ValueError(f"{source} has no cell tagged 'parameters'")
    nb.metadata["kernelspec"] = {"name": kernel_name, "display_name": "Python (sae-med)",
                                 "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def execute_notebook(source: Path, output: Path, parameters: Mapping[str, Any],
                     kernel_name: str, cwd: Path, progress: bool = False) -> Path:
    """jupytext ``source`` -> ``output`` (.ipynb), executed by papermill with ``parameters``.

    Raises :class:`NotebookError` naming the notebook and the failing cell.
    """
    # deferred: nbformat is needed only by the book build
    import nbformat

    # deferred: papermill is heavy to import; only the book build needs it
    import papermill

    # deferred: papermill is heavy to import; only the book build needs it
    from papermill.exceptions import PapermillExecutionError

    nb = read_notebook(source, kernel_name)
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, output)
    try:
        papermill.execute_notebook(str(output), str(output), parameters=dict(parameters),
                                   kernel_name=kernel_name, language="python", cwd=str(cwd),
                                   progress_bar=progress, log_output=False)
    except PapermillExecutionError as err:
        # papermill counts its injected-parameters cell; name the cell as numbered in the
        # source file instead (1-based, markdown cells included).
        executed = nbformat.read(output, as_version=4)
        injected = sum("injected-parameters" in c.metadata.get("tags", [])
                       for c in executed.cells[:err.cell_index])
        raise NotebookError(source.name, err.cell_index - injected + 1, err.source,
                            err.ename, err.evalue, output) from None
    return output


def drop_plotlyjs(path: Path) -> None:
    """Remove the executed notebook's own copy of plotly.js (the output marked
    :data:`~sae_med.report.notebook.PLOTLYJS_OUTPUT`): the built site loads one copy on every
    page with a figure (:mod:`sae_med.report.sphinx_assets`) instead of ~5 MB per page."""
    # deferred: nbformat is needed only by the book build
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if not o.get("metadata", {}).get(PLOTLYJS_OUTPUT)]
    nbformat.write(nb, path)


def _run_jupyter_book(src: Path) -> None:
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(src), "--all",
           "--builder", "html", "-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        problems = [ln for ln in out.splitlines() if "WARNING" in ln or "ERROR" in ln]
        raise BookBuildError(f"{' '.join(cmd)} failed (exit {proc.returncode}); warnings "
                             "count as errors:\n" + "\n".join(problems[:50])
                             + f"\n--- end of its output ---\n{out[-3000:]}")


def build_book(config: str, overrides: Sequence[str] = (), build_dir: Path = Path("_build"),
               run_name: str = "", notebooks_dir: Path | None = None,
               source_root: Path = PROJECT_ROOT, progress: bool = False) -> Path:
    """Execute every notebook with ``config`` and build the book; returns its index.html.

    Args:
        config: YAML config path, passed to each notebook as written (relative paths are
            resolved from the current directory, where the notebooks run).
        overrides: ``section.field=value`` overrides, passed to each notebook.
        build_dir: parent of the build folder (``{build_dir}/{run name}``).
        run_name: optional run name (replaces the config's ``name``; artefacts go to
            ``{output_dir}/{run_name}``).
        notebooks_dir: folder of ``NN_*.py`` notebooks (default ``{source_root}/notebooks``).
        source_root: folder with ``_config.yml``, ``_toc.yml`` and ``book/``.
        progress: papermill's per-cell progress bar.
    """
    cfg = notebook_config(config, list(overrides), run_name)  # validate before any work
    notebooks_dir = Path(notebooks_dir or source_root / "notebooks")
    src = Path(build_dir) / cfg.name
    kernel = ensure_kernel()
    pm_log = logging.getLogger("papermill")
    if pm_log.level == logging.NOTSET:  # its per-notebook INFO lines repeat ours
        pm_log.setLevel(logging.WARNING)
    params = {"config": str(config), "overrides": list(overrides), "run_name": run_name}
    cwd = Path.cwd()
    t_all = time.time()
    info = build_info(config, overrides, cfg, source_root)
    repository = launch.book_repository(source_root)
    for nb in list_notebooks(notebooks_dir):
        t0 = time.time()
        executed = execute_notebook(nb, src / "notebooks" / f"{nb.stem}.ipynb", params,
                                    kernel, cwd, progress)
        drop_plotlyjs(executed)
        launch.add_install_cell(executed, repository, launch.commit_ref(info["book_commit"]))
        log.info("executed %s in %.1f s", nb.name, time.time() - t0)
    assemble_source(src, source_root, info, repository)
    t0 = time.time()
    _run_jupyter_book(src)
    index = (src / "_build" / "html" / "index.html").resolve()
    if not index.exists():
        raise BookBuildError(f"jupyter-book finished but {index} is missing")
    launch.write_binder(index.parent, source_root)
    log.info("jupyter-book build: %.1f s; book built in %.1f s", time.time() - t0,
             time.time() - t_all)
    return index


def assemble_source(src: Path, source_root: Path, info: Mapping[str, str], repository: str
                    ) -> None:
    """The book's source beside its executed notebooks: ``_config.yml`` (with the build's
    substitutions, the citation read from ``CITATION.cff`` and the repository the launch
    buttons open), ``_toc.yml``, ``CITATION.cff``, ``book/`` and ``book/citation.bib``."""
    for name in BOOK_FILES:
        shutil.copy2(source_root / name, src / name)
    cited = citation.read_citation(source_root / "CITATION.cff")
    write_build_info(src / "_config.yml", {**info, **citation.substitutions(cited)},
                     repository)
    shutil.rmtree(src / "book", ignore_errors=True)
    shutil.copytree(source_root / "book", src / "book")
    (src / "book" / "citation.bib").write_text(citation.bibtex(cited), encoding="utf-8")


def source_commit(root: Path) -> str:
    """The checkout's commit (12 hex digits, marked when tracked files differ from it), else
    ``$GITHUB_SHA``, else "unknown"."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")[:12]
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GITHUB_SHA", "")[:12] or "unknown (not a git checkout)"
    return f"{head} (with uncommitted changes)" if dirty else head


def build_info(config: str, overrides: Sequence[str], cfg: Config, root: Path
               ) -> dict[str, str]:
    """What built this copy of the book, for its landing page (MyST substitutions
    ``book_config``, ``book_config_hash``, ``book_commit``, ``book_built``)."""
    return {"book_config": " ".join([str(config), *overrides]),
            "book_config_hash": cfg.hash(), "book_commit": source_commit(root),
            "book_built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_build_info(config_yml: Path, info: Mapping[str, str], repository: str = ""
                     ) -> None:
    """Set ``info`` as the MyST substitutions of a book's ``_config.yml`` and ``repository``
    as the repository its launch buttons open (in place). Without a repository the launch
    links are dropped: the theme cannot build them."""

    book = yaml.safe_load(config_yml.read_text())
    book.setdefault("parse", {}).setdefault("myst_substitutions", {}).update(info)
    book.setdefault("repository", {})["url"] = repository
    if not repository:
        book["launch_buttons"] = {**book.get("launch_buttons", {}),
                                  **dict.fromkeys(LAUNCH_URLS, "")}
    config_yml.write_text(yaml.safe_dump(book, sort_keys=False, allow_unicode=True))
