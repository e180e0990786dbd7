"""Build the Jupyter Book, and the few helpers its notebooks share.

``build_book`` executes every ``notebooks/NN_*.py`` (jupytext percent files) through
papermill with the config path, overrides and run name injected into its ``parameters``
cell, assembles the book source in a build folder and runs ``jupyter-book build`` (1.x, with
``execute_notebooks: "off"``: the notebooks are already executed). Layout::

    {build_dir}/{run name}/             book source, assembled here (never committed)
        _config.yml, _toc.yml, book/*.md
        notebooks/NN_*.ipynb            executed notebooks
        _build/html/index.html          the built book

The notebook helpers keep notebooks thin: config loading with a run name, a plotly
renderer whose figures work offline (plotly.js embedded once per page, no CDN, no MathJax),
training curves from ``metrics.jsonl``, metric-vs-L0 and cross-evaluation figures from the
tidy results table, and latent firing statistics over an activation cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sae_med.config import Config, load_config

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""Where ``_config.yml``, ``_toc.yml``, ``book/`` and ``notebooks/`` live (editable install)."""
KERNEL_NAME = "sae-med"
BOOK_FILES = ("_config.yml", "_toc.yml")

CORPUS_COLORS = {"medical": "#c0392b", "broad": "#2471a3", "wordnet": "#7d3c98",
                 "clinical_qa": "#c0392b", "web": "#2471a3"}
EVAL_DASH = {0: "solid", 1: "dash", 2: "dot", 3: "dashdot"}


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
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
        # Same bin/ folder = same environment (python and python3 are both fine).
        if spec.argv and Path(spec.argv[0]).parent == Path(sys.executable).parent:
            return name
    except NoSuchKernel:
        pass
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
    import nbformat
    import papermill
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
    for nb in list_notebooks(notebooks_dir):
        t0 = time.time()
        execute_notebook(nb, src / "notebooks" / f"{nb.stem}.ipynb", params, kernel, cwd,
                         progress)
        log.info("executed %s in %.1f s", nb.name, time.time() - t0)
    for name in BOOK_FILES:
        shutil.copy2(source_root / name, src / name)
    write_build_info(src / "_config.yml", build_info(config, overrides, cfg, source_root))
    shutil.rmtree(src / "book", ignore_errors=True)
    shutil.copytree(source_root / "book", src / "book")
    t0 = time.time()
    _run_jupyter_book(src)
    index = (src / "_build" / "html" / "index.html").resolve()
    if not index.exists():
        raise BookBuildError(f"jupyter-book finished but {index} is missing")
    log.info("jupyter-book build: %.1f s; book built in %.1f s", time.time() - t0,
             time.time() - t_all)
    print(f"book={index}", flush=True)
    return index


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


def write_build_info(config_yml: Path, info: Mapping[str, str]) -> None:
    """Set ``info`` as the MyST substitutions of a book's ``_config.yml`` (in place)."""
    import yaml

    book = yaml.safe_load(config_yml.read_text())
    book.setdefault("parse", {}).setdefault("myst_substitutions", {}).update(info)
    config_yml.write_text(yaml.safe_dump(book, sort_keys=False, allow_unicode=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sae-med book",
                                description="Execute the notebooks and build the book.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.field=value overrides")
    p.add_argument("--build-dir", type=Path, default=Path("_build"))
    p.add_argument("--run-name", default="")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        build_book(args.config, args.overrides, args.build_dir, args.run_name)
    except NotebookError as err:
        print(f"sae-med book: {err}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------
# Notebook helpers
# --------------------------------------------------------------------------------------

def notebook_config(config: str, overrides: Iterable[str] = (), run_name: str = "") -> Config:
    """The notebooks' config: ``config`` + ``overrides``, renamed to ``run_name`` if given
    (parameters as papermill may pass them: :func:`sae_med.notebooks.notebook_parameters`)."""
    from sae_med.notebooks import notebook_parameters

    config, overrides, run_name = notebook_parameters(config, overrides, run_name)
    extra = [f"name={run_name}"] if run_name else []
    return load_config(config, [*overrides, *extra])


def domain_pair(cfg: Config) -> tuple[str, str]:
    """(domain corpus, broad corpus) among ``cfg.train_corpora``: the first whose declared
    domain is not ``broad``, and the first that is; raises unless there is one of each."""
    from sae_med.data import corpus_info

    domain = [c for c in cfg.train_corpora if corpus_info(c).domain != "broad"]
    broad = [c for c in cfg.train_corpora if corpus_info(c).domain == "broad"]
    if not domain or not broad:
        raise ValueError(f"config {cfg.name!r} trains on {list(cfg.train_corpora)}: the "
                         "comparison needs one domain (e.g. medical) and one broad corpus")
    return domain[0], broad[0]


def metric_value(results: Any, metric: str, train_corpus: str, eval_corpus: str,
                 l0_target: float) -> float:
    """One ``value`` from the tidy results table (NaN if absent)."""
    sel = results[(results.metric == metric) & (results.train_corpus == train_corpus)
                  & (results.eval_corpus == eval_corpus) & (results.l0_target == l0_target)]
    return float(sel.value.iloc[0]) if len(sel) else float("nan")


def with_interval(results: Any, metrics: Sequence[str], digits: int = 3) -> Any:
    """Wide table (SAE x eval corpus rows, one column per metric) of "value [low, high]";
    seed replicates get their own rows when the table has a ``replicate`` column."""
    df = results[results.metric.isin(metrics)].copy()

    def fmt(r: Any) -> str:
        if r.low != r.low or r.high != r.high:  # NaN: a point value
            return f"{r.value:.{digits}f}"
        return f"{r.value:.{digits}f} [{r.low:.{digits}f}, {r.high:.{digits}f}]"

    df["text"] = df.apply(fmt, axis=1)
    index = ["train_corpus", "l0_target", *(["replicate"] if "replicate" in df else []),
             "eval_corpus"]
    wide = df.pivot_table(index=index, columns="metric", values="text", aggfunc="first")
    return wide[[m for m in metrics if m in wide.columns]]


def _cell(value: float, low: float, high: float, digits: int) -> str:
    if value != value:
        return "n/a"
    if low != low or high != high:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def oriented_gaps(gaps: Any, first: str, second: str) -> Any:
    """The gap rows of :func:`sae_med.evaluate.load_comparisons` as ``first`` minus
    ``second`` (rows stored the other way round are negated, their interval flipped)."""
    import pandas as pd

    same = gaps[(gaps.train_corpus == first) & (gaps.versus == second)].copy()
    flip = gaps[(gaps.train_corpus == second) & (gaps.versus == first)].copy()
    flip["value"], flip["low"], flip["high"] = -flip.value, -flip.high, -flip.low
    flip["train_corpus"], flip["versus"] = first, second
    return pd.concat([same, flip], ignore_index=True)


def gap_table(gaps: Any, metrics: Sequence[str], basis: str = "l0_target", digits: int = 3
              ) -> Any:
    """Wide table of gaps, "value [low, high]" with a ``*`` where the 95% interval
    excludes 0: rows (eval corpus, target L0 or FVE), one column per metric."""
    at = basis
    df = gaps[(gaps.basis == basis) & gaps.metric.isin(metrics)].copy()
    if df.empty:
        return df
    df["text"] = [_cell(r.value, r.low, r.high, digits) + (" *" if r.excludes_zero else "")
                  for r in df.itertuples()]
    wide = df.pivot_table(index=["eval_corpus", at], columns="metric", values="text",
                          aggfunc="first")
    return wide[[m for m in metrics if m in wide.columns]]


def family_table(families: Any, metrics: Sequence[str], digits: int = 3) -> Any:
    """Across-seed means at each target L0: "mean [low, high]" (hierarchical interval) and
    the replicates' own values, one row per (eval corpus, train corpus, target L0)."""
    df = families[(families.basis == "l0_target") & families.metric.isin(metrics)].copy()
    if df.empty:
        return df
    df["text"] = [_cell(r.value, r.low, r.high, digits) + "; seeds " + ", ".join(
        "n/a" if v is None else f"{v:.{digits}f}" for v in r.seed_values)
        for r in df.itertuples()]
    wide = df.pivot_table(index=["eval_corpus", "train_corpus", "l0_target"],
                          columns="metric", values="text", aggfunc="first")
    return wide[[m for m in metrics if m in wide.columns]]


def gap_intervals(gaps: Any, metric: str, eval_corpus: str, basis: str = "l0_target"
                  ) -> list[Any]:
    """The :class:`~sae_med.compare.Interval` of every gap of ``metric`` on
    ``eval_corpus`` at ``basis`` (in target-L0 or FVE order)."""
    from sae_med.compare import Interval

    sel = gaps[(gaps.metric == metric) & (gaps.eval_corpus == eval_corpus)
               & (gaps.basis == basis)].sort_values(basis)
    return [Interval(float(r.value), None if r.low != r.low else float(r.low),
                     None if r.high != r.high else float(r.high)) for r in sel.itertuples()]


def gap_sentence(ivs: Sequence[Any], what: str, where: str, digits: int = 3) -> str:
    """One sentence stating the gaps and how many of their intervals exclude 0."""
    subject = f"{what} {where}".strip()
    if not ivs:
        return f"{subject}: no comparison in this run (e.g. no common FVE range)."
    cells = "; ".join(_cell(iv.value, *(float("nan") if v is None else v
                                         for v in (iv.low, iv.high)), digits) for iv in ivs)
    n = sum(iv.excludes_zero for iv in ivs)
    return (f"{subject}: {cells} (95% intervals); the interval excludes 0 in {n} of "
            f"{len(ivs)} comparisons.")


def use_offline_plotly() -> None:
    """Render plotly figures as HTML that works with no network.

    plotly's ``notebook`` renderer adds a MathJax ``<script src>`` from a CDN to every
    figure, which fails offline; this one embeds plotly.js once (in the output of the cell
    that calls it, so it precedes every figure on the page) and nothing remote.
    """
    import plotly.io as pio
    from plotly.io.base_renderers import HtmlRenderer

    class OfflineRenderer(HtmlRenderer):
        def __init__(self) -> None:
            super().__init__(connected=False, full_html=False, global_init=True,
                             include_plotlyjs=False)

        def to_mimebundle(self, fig_dict: dict) -> dict[str, str]:
            html = pio.to_html(fig_dict, include_plotlyjs=False, include_mathjax=False,
                               full_html=False, default_width="100%", default_height=450,
                               validate=False, config={"displaylogo": False})
            return {"text/html": html}

    pio.renderers["sae_med_offline"] = OfflineRenderer()
    pio.renderers.default = "sae_med_offline"


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.jsonl`` (one JSON object per line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def training_curves(results: Mapping[str, Sequence[Any]]) -> Any:
    """Tidy DataFrame of every SAE's training log: one row per logged step, with columns
    ``train_corpus``, ``replicate``, ``l0_target`` and the ``metrics.jsonl`` fields."""
    import pandas as pd

    from sae_med.train import METRICS_NAME

    frames = []
    for corpus, runs in results.items():
        for r in runs:
            df = pd.DataFrame(read_metrics(Path(r.path) / METRICS_NAME))
            df.insert(0, "l0_target", r.l0_target)
            df.insert(0, "replicate", r.replicate)
            df.insert(0, "train_corpus", corpus)
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _line_style(train_corpus: str, eval_index: int = 0) -> dict[str, Any]:
    return {"color": CORPUS_COLORS.get(train_corpus), "dash": EVAL_DASH.get(eval_index % 4)}


def metric_vs_l0(results: Any, metric: str, y_title: str, title: str = "",
                 eval_corpora: Sequence[str] | None = None) -> Any:
    """Figure: ``metric`` against the measured L0, one line per (train, eval) corpus pair,
    with the 95% interval (``low``/``high``) as error bars.

    ``results`` is the tidy table of :func:`sae_med.evaluate.load_results`.
    """
    import plotly.graph_objects as go

    df = results
    evals = list(eval_corpora or sorted(df.eval_corpus.unique()))
    fig = go.Figure()
    for train in sorted(df.train_corpus.unique()):
        for j, ev in enumerate(evals):
            sub = df[(df.train_corpus == train) & (df.eval_corpus == ev)]
            y = sub[sub.metric == metric].set_index("l0_target").sort_index()
            x = sub[sub.metric == "l0"].set_index("l0_target").reindex(y.index)
            if y.empty:
                continue
            fig.add_trace(go.Scatter(
                x=x.value, y=y.value, mode="lines+markers", line=_line_style(train, j),
                name=f"trained on {train}, evaluated on {ev}",
                error_y={"type": "data", "symmetric": False,
                         "array": (y.high - y.value).clip(lower=0),
                         "arrayminus": (y.value - y.low).clip(lower=0)},
                customdata=y.index.values,
                hovertemplate="target L0 %{customdata}<br>L0 %{x:.1f}<br>%{y:.4f}"))
    fig.update_layout(title=title or f"{metric} vs L0", xaxis_title="L0 (active latents per token)",
                      yaxis_title=y_title, legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(type="log")
    return fig


def cross_eval_figure(results: Any, metric: str, y_title: str,
                      l0_targets: Sequence[float] | None = None) -> Any:
    """The train x eval cross-evaluation: grouped bars of ``metric`` (SAE trained on X,
    bars per eval corpus) with 95% intervals, one panel per target L0."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    df = results[results.metric == metric]
    targets = list(l0_targets or sorted(df.l0_target.unique()))
    fig = make_subplots(rows=1, cols=len(targets), shared_yaxes=True,
                        subplot_titles=[f"target L0 {t:g}" for t in targets])
    for i, t in enumerate(targets, start=1):
        sub_t = df[df.l0_target == t]
        for train in sorted(sub_t.train_corpus.unique()):
            sub = sub_t[sub_t.train_corpus == train].sort_values("eval_corpus")
            fig.add_trace(go.Bar(
                x=[f"on {e}" for e in sub.eval_corpus], y=sub.value,
                name=f"SAE trained on {train}", legendgroup=train, showlegend=i == 1,
                marker_color=CORPUS_COLORS.get(train),
                error_y={"type": "data", "symmetric": False,
                         "array": (sub.high - sub.value).clip(lower=0).fillna(0),
                         "arrayminus": (sub.value - sub.low).clip(lower=0).fillna(0)}),
                row=1, col=i)
        fig.update_xaxes(title_text="evaluation corpus", row=1, col=i)
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(barmode="group",
                      title=f"{metric}: SAE trained on (colour) x evaluated on (axis)",
                      legend={"orientation": "h", "y": -0.25})
    return fig


# --------------------------------------------------------------------------------------
# Sphinx extension (``sphinx: extra_extensions: [sae_med.book]`` in _config.yml)
# --------------------------------------------------------------------------------------

def _dedupe_assets(app: Any, pagename: str, templatename: str, context: dict, doctree: Any
                   ) -> None:
    """Drop repeated <script>/<link> assets from a page.

    Sphinx 7.4 re-adds assets registered after the builder started (sphinx-thebe's,
    sphinx-togglebutton's inline scripts) with ``filename=""`` instead of ``None``, so they
    escape its own de-duplication; a repeated ``const THEBE_JS_URL`` is a JavaScript error.
    Also sets the colour mode, whose absence the theme logs as a console error.
    """
    if not context.get("default_mode"):
        context["default_mode"] = "light"
    for key in ("script_files", "css_files"):
        seen: set = set()
        unique = []
        for asset in context.get(key, []):
            attrs = getattr(asset, "attributes", {}) or {}
            ident = (getattr(asset, "filename", str(asset)) or "",
                     tuple(sorted((k, str(v)) for k, v in attrs.items() if k != "priority")))
            if ident not in seen:
                seen.add(ident)
                unique.append(asset)
        context[key] = unique


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _dedupe_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    sys.exit(main())
