"""The Jupyter Book: notebooks are well-formed, a failing cell fails the build naming it, and
(slow) the smoke book builds and every page, served over loopback HTTP, renders in headless
Chromium with the network disabled: no failed request, no console errors and every plotly
figure drawn; each chapter offers its executed notebook and Colab and Binder links."""

from __future__ import annotations

import ast
import functools
import os
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from sae_med.config import load_config
from sae_med.report.book import (
    PROJECT_ROOT,
    NotebookError,
    build_book,
    build_info,
    list_notebooks,
    write_build_info,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync",
                 # The network off: every request that would leave the machine goes to a
                 # proxy where nothing listens (Chromium never proxies loopback), and no
                 # name but the loopback address resolves.
                 "--proxy-server=http://127.0.0.1:9",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
REPOSITORY = "example-org/sae-med"
"""The GitHub repository the test book names (as Actions' $GITHUB_REPOSITORY would)."""
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SMOKE = PROJECT_ROOT / "configs" / "smoke.yaml"


def _toc_files() -> list[str]:
    toc = yaml.safe_load((PROJECT_ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files += [c["file"] for c in part["chapters"]]
    return files


# ------------------------------------------------------------------------------- fast

def test_every_notebook_has_one_parameters_cell_of_plain_literals():
    import jupytext

    for path in list_notebooks(PROJECT_ROOT / "notebooks"):
        nb = jupytext.read(path)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} parameters cells"
        tree = ast.parse(tagged[0].source)
        names = set()
        for node in tree.body:
            assert isinstance(node, ast.Assign), f"{path.name}: parameters cell has {node}"
            ast.literal_eval(node.value)  # raises unless a plain literal
            names |= {t.id for t in node.targets}
        assert {"config", "overrides", "run_name"} <= names, path.name


def test_toc_lists_every_notebook_and_page():
    toc = set(_toc_files())
    notebooks = {f"notebooks/{p.stem}" for p in list_notebooks(PROJECT_ROOT / "notebooks")}
    pages = {f"book/{p.stem}" for p in (PROJECT_ROOT / "book").glob("*.md")}
    assert notebooks | pages == toc


HEADER_ITEMS = ("Teaches", "Before it", "Time, default config", "Time, smoke config",
                "Needs")


def test_every_chapter_opens_with_what_it_teaches_needs_and_takes():
    """Issue 34 item 3: the first cell, under the title, is an "About this chapter"
    admonition with each item, in this order."""
    import jupytext

    for path in list_notebooks(PROJECT_ROOT / "notebooks"):
        first = jupytext.read(path).cells[0].source
        header = first[first.index("```{admonition} About this chapter"):]
        header = header[:header.index("\n```", 3)]
        items = re.findall(r"^- \*\*(.+?):\*\*", header, re.M)
        assert tuple(items) == HEADER_ITEMS, f"{path.name}: {items}"


EXERCISE = re.compile(r"^```\{exercise\}.*\n:label: (\S+)", re.M)
SOLUTION_START = re.compile(r"^```\{solution-start\} (\S+)\n:class: dropdown", re.M)


def test_every_notebook_ends_with_exercises_whose_solutions_are_executed_cells():
    """2-3 exercises after the Summary, each with a folded, gated solution holding at
    least one code cell (which the book build executes)."""
    import jupytext

    for path in list_notebooks(PROJECT_ROOT / "notebooks"):
        cells = jupytext.read(path).cells
        summary = max(i for i, c in enumerate(cells) if c.source.startswith("## Summary"))
        labels, open_label, code_in = [], None, 0
        for c in cells[summary + 1:]:
            if c.cell_type == "code":
                code_in += open_label is not None
                continue
            if open_label and "```{solution-end}" in c.source:
                assert code_in, f"{path.name}: solution of {open_label} runs no code"
                open_label = None
            labels += EXERCISE.findall(c.source)
            started = SOLUTION_START.findall(c.source)
            if started:
                assert started == [labels[-1]], f"{path.name}: solution {started} out of order"
                open_label, code_in = started[0], 0
        assert open_label is None, f"{path.name}: solution of {open_label} never ends"
        assert 2 <= len(labels) <= 3, f"{path.name}: {len(labels)} exercises"
        assert not [c for c in cells[:summary] if EXERCISE.search(c.source)], path.name


def test_offline_renderer_fetches_nothing():
    import plotly.graph_objects as go
    import plotly.io as pio

    from sae_med.report.notebook import use_offline_plotly

    use_offline_plotly()
    html = pio.renderers["sae_med_offline"].to_mimebundle(
        go.Figure(go.Scatter(x=[1, 2], y=[3, 4])).to_dict())["text/html"]
    assert "plotly-graph-div" in html
    assert "src=" not in html and "cdn" not in html.lower()


def test_notebook_carries_plotly_js_once_and_the_book_drops_it(tmp_path):
    """An executed notebook draws on its own (one marked copy of plotly.js before its
    figures); the book's copy drops it, the site serving plotly.js instead."""
    import nbformat

    from sae_med.report.book import drop_plotlyjs, ensure_kernel, execute_notebook
    from sae_med.report.notebook import PLOTLYJS_OUTPUT

    source = tmp_path / "01_figs.py"
    source.write_text(
        '# %% tags=["parameters"]\nconfig = ""\noverrides = []\nrun_name = ""\n\n'
        "# %%\nimport plotly.graph_objects as go\nfrom sae_med.report.notebook import "
        "use_offline_plotly\n\nuse_offline_plotly()\n"
        "for y in ([1, 2], [2, 1]):\n    go.Figure(go.Scatter(y=y)).show()\n")
    out = execute_notebook(source, tmp_path / "01_figs.ipynb", {}, ensure_kernel(), tmp_path)

    def html_outputs() -> list:
        return [o for c in nbformat.read(out, as_version=4).cells
                for o in c.get("outputs", []) if "text/html" in o.get("data", {})]

    marked = [o for o in html_outputs() if o.get("metadata", {}).get(PLOTLYJS_OUTPUT)]
    assert len(marked) == 1 and len(html_outputs()) == 3  # plotly.js, then two figures
    assert "plotly.js v" in marked[0]["data"]["text/html"]
    drop_plotlyjs(out)
    kept = html_outputs()
    assert len(kept) == 2 and all("plotly-graph-div" in o["data"]["text/html"] for o in kept)


def test_failing_cell_fails_the_build_naming_notebook_and_cell(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    (nbdir / "01_boom.py").write_text(
        '# %% tags=["parameters"]\nconfig = ""\noverrides = []\nrun_name = ""\n\n'
        '# %%\nx = 1\n\n# %%\nraise ValueError("deliberate failure " + str(x))\n')
    with pytest.raises(NotebookError) as info:
        build_book(str(SMOKE), build_dir=tmp_path / "build", notebooks_dir=nbdir)
    err = info.value
    assert err.notebook == "01_boom.py"
    assert err.cell == 3  # parameters, x = 1, raise
    assert "raise ValueError" in err.source
    message = str(err)
    assert "01_boom.py" in message and f"cell {err.cell}" in message
    assert "deliberate failure 1" in message
    assert err.output.exists()  # the partially executed notebook is kept for inspection


# ------------------------------------------------------------------------------- slow

@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """The smoke book, built once (runs every notebook: minutes on a CPU)."""
    cwd, repository = os.getcwd(), os.environ.get("GITHUB_REPOSITORY")
    os.chdir(PROJECT_ROOT)  # the notebooks resolve configs/ and runs/ from here
    os.environ["GITHUB_REPOSITORY"] = REPOSITORY  # so that the launch links are built
    try:
        index = build_book("configs/smoke.yaml",
                           build_dir=tmp_path_factory.mktemp("book_build"))
    finally:
        os.chdir(cwd)
        if repository is None:
            os.environ.pop("GITHUB_REPOSITORY")
        else:
            os.environ["GITHUB_REPOSITORY"] = repository
    return index


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # one line per request would bury pytest's output
        pass


@pytest.fixture(scope="module")
def site(built_book):
    """The built book served over HTTP on loopback, as a reader's static host serves it;
    yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(built_book.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: run scripts/setup_browser.sh")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(browser, url: str, screenshot: Path | None = None) -> dict:
    """Load ``url`` (a page of :func:`site`); return console errors, page errors, failed
    requests (no answer, or an HTTP error), requests to anywhere but the site, and the state
    of its plotly figures."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    seen: dict[str, list[str]] = {"console": [], "pageerror": [], "failed": [], "remote": []}
    base = url[:url.index("/", len("http://")) + 1]
    page.on("console", lambda m: seen["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["pageerror"].append(str(e)))
    page.on("requestfailed", lambda r: seen["failed"].append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: seen["failed"].append(f"{r.url} (HTTP {r.status})")
            if r.status >= 400 else None)
    page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:"))
            else seen["remote"].append(r.url))
    page.goto(url, wait_until="load")
    page.wait_for_timeout(300)  # plotly draws synchronously; let late scripts settle
    # a redirect page (the site's index.html) may still be navigating on a busy machine:
    # read the page it lands on, and never a document without its body yet
    page.wait_for_load_state("load")
    state = page.evaluate("""() => {
        const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
        const root = document.querySelector('main') || document.body
                     || document.documentElement;
        return {
            title: document.title,
            text: root.innerText.length,
            plotly: typeof window.Plotly,
            figures: divs.length,
            drawn: divs.filter(d => d._fullLayout && d.querySelector('.main-svg')).length,
        };
    }""")
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    ctx.close()
    return {**seen, **state}


def test_landing_page_says_which_config_and_commit_built_it(tmp_path):
    import shutil
    import subprocess

    repo = tmp_path / "checkout"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                                     "user.email=t@t", *a], check=True, capture_output=True,
                                    text=True).stdout.strip()
    git("init", "-q")
    (repo / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-qm", "one")
    head = git("rev-parse", "HEAD")
    cfg = load_config(SMOKE, ["train.lr=0.002"])
    info = build_info("configs/smoke.yaml", ["train.lr=0.002"], cfg, repo)
    assert info["book_config"] == "configs/smoke.yaml train.lr=0.002"
    assert info["book_config_hash"] == cfg.hash() and info["book_commit"] == head[:12]
    (repo / "f.txt").write_text("b")
    assert build_info("c", [], cfg, repo)["book_commit"] == f"{head[:12]} (with uncommitted " \
                                                             "changes)"
    assert build_info("c", [], cfg, tmp_path)["book_commit"].startswith("unknown")
    book_cfg = tmp_path / "_config.yml"
    shutil.copy(PROJECT_ROOT / "_config.yml", book_cfg)
    write_build_info(book_cfg, info)
    parse = yaml.safe_load(book_cfg.read_text())["parse"]
    assert parse["myst_substitutions"] == info and "substitution" in parse[
        "myst_enable_extensions"]
    intro = (PROJECT_ROOT / "book" / "intro.md").read_text()
    assert all(f"{{{{ {key} }}}}" in intro for key in info)


@pytest.mark.slow
def test_book_builds_with_every_chapter(built_book):
    html = built_book.parent
    assert built_book.name == "index.html"
    assert "configs/smoke.yaml" in (html / "book" / "intro.html").read_text()
    for doc in _toc_files():
        assert (html / f"{doc}.html").exists(), f"chapter {doc} missing from the build"


@pytest.mark.slow
def test_site_holds_one_copy_of_plotly_js(built_book):
    """plotly.js (~5 MB) is one static asset that the figure pages load, not a copy inside
    every notebook page and its .ipynb download (87 MB in all before; 14 MB now)."""
    from plotly.offline import get_plotlyjs

    from sae_med.report.sphinx_assets import PLOTLY_JS

    html = built_book.parent
    banner = get_plotlyjs()[:200].encode()
    files = [p for p in html.rglob("*") if p.is_file()]
    holders = [p.relative_to(html).as_posix() for p in files if banner in p.read_bytes()]
    assert holders == [f"_static/{PLOTLY_JS}"]
    plotly_bytes = (html / holders[0]).stat().st_size
    site_bytes = sum(p.stat().st_size for p in files)
    assert site_bytes < 4 * plotly_bytes, f"site of {site_bytes:,} bytes"
    page = (html / "notebooks" / "03_fidelity.html").read_text()
    assert page.count(f'_static/{PLOTLY_JS}"') == 1


@pytest.mark.slow
def test_results_page_says_smoke_verdicts_are_not_judged(built_book):
    """The smoke SAEs fail the ΔCE quality bar, so no claim of this run gets a verdict:
    the paper's, the difference-in-differences and the mix's rows. The placebo and
    random-weights rows come from other runs: their own verdicts, or how to produce them."""
    from sae_med.measure.compare import NOT_JUDGED
    from sae_med.report.domain_report import DOMAINS_COMMAND
    from sae_med.report.random_weights import RANDOM_WEIGHTS_COMMAND

    text = (built_book.parent / "book" / "results.html").read_text()
    section = text[text.index("Verdicts for this run"):]
    table = section[section.index("<table"):section.index("</table>")]
    rows = table.split("<tr")[2:]  # after the header
    placebo = [r for r in rows if "Placebo domains" in r]
    random = [r for r in rows if "Random-weights control" in r]
    ours = [r for r in rows if r not in placebo + random]
    assert len(ours) == 12 and len(placebo) == 2 and len(random) == 2
    assert all(NOT_JUDGED in r and "supported" not in r.replace(NOT_JUDGED, "")
               for r in ours)
    assert all(DOMAINS_COMMAND in r or "supported" in r for r in placebo)
    assert all(DOMAINS_COMMAND in r or RANDOM_WEIGHTS_COMMAND in r or "training" in r
               for r in random)


@pytest.mark.slow
@pytest.mark.parametrize("doc", _toc_files())
def test_page_renders_offline_without_errors(site, browser, doc):
    shot = ARTIFACTS / f"{doc.replace('/', '_')}.png" if doc == "book/results" else None
    r = _open(browser, f"{site}{doc}.html", shot)
    assert r["title"] and r["text"] > 200, f"{doc}: empty page"
    assert not r["remote"], f"{doc}: requests leave the machine: {r['remote'][:5]}"
    assert not r["failed"], f"{doc}: failed requests: {r['failed'][:5]}"
    assert not r["pageerror"], f"{doc}: JavaScript errors: {r['pageerror'][:5]}"
    assert not r["console"], f"{doc}: console errors: {r['console'][:5]}"
    if doc.startswith("notebooks/0") and doc not in ("notebooks/06_autointerp",):
        assert r["figures"] > 0, f"{doc}: no plotly figure"
    if r["figures"]:
        assert r["plotly"] == "object", f"{doc}: plotly.js not loaded"
        assert r["drawn"] == r["figures"], f"{doc}: {r['drawn']}/{r['figures']} figures drawn"


@pytest.mark.slow
def test_every_other_page_of_the_site_loads_with_the_network_disabled(built_book, site,
                                                                       browser):
    """The pages outside the table of contents (index, search, genindex, ...) too: 0 failed
    requests and nothing fetched from elsewhere (no CDN fonts, scripts or MathJax)."""
    html = built_book.parent
    toc = {f"{doc}.html" for doc in _toc_files()}
    pages = sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                   if not p.relative_to(html).parts[0].startswith("_"))
    problems = {}
    for page in [p for p in pages if p not in toc]:
        r = _open(browser, f"{site}{page}")
        bad = r["failed"] + r["remote"] + r["pageerror"]
        if bad or r["drawn"] != r["figures"]:
            problems[page] = bad or f"{r['drawn']}/{r['figures']} figures drawn"
    assert len(pages) > len(toc) and not problems, problems


@pytest.mark.slow
def test_chapters_offer_their_executed_notebook_and_colab_and_binder(built_book):
    """Download: the executed notebook (outputs kept, the install cell first); launch: that
    notebook on the gh-pages branch, on Colab and on Binder, whose environment (the pinned
    requirements) is in the site."""
    import nbformat

    from sae_med.report.launch import BINDER_FILES, INSTALL_TAG

    html = built_book.parent
    for path in list_notebooks(PROJECT_ROOT / "notebooks"):
        page = (html / "notebooks" / f"{path.stem}.html").read_text()
        source = f"_sources/notebooks/{path.stem}.ipynb"
        assert f'href="../{source}"' in page, f"{path.stem}: no download of its notebook"
        nb = nbformat.read(html / source, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert INSTALL_TAG in code[0].metadata.get("tags", []), path.stem
        assert f"https://github.com/{REPOSITORY}" in code[0].source, path.stem
        assert any(c.outputs for c in code), f"{path.stem}: the download is not executed"
        assert (f"https://colab.research.google.com/github/{REPOSITORY}/blob/gh-pages/"
                f"{source}") in page, f"{path.stem}: no Colab link"
        assert (f"https://mybinder.org/v2/gh/{REPOSITORY}/gh-pages?urlpath=lab/tree/"
                f"{source}") in page, f"{path.stem}: no Binder link"
    for name in BINDER_FILES:
        assert (html / "binder" / name).read_bytes() == (PROJECT_ROOT / name).read_bytes()
    assert (html / "binder" / "postBuild").exists()


@pytest.mark.slow
def test_cite_page_quotes_citation_cff(built_book):
    import html

    from sae_med.report.citation import bibtex, read_citation

    cited = read_citation(PROJECT_ROOT / "CITATION.cff")
    page = (built_book.parent / "book" / "cite.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))  # highlighting splits the BibTeX
    assert cited.software.title in text and cited.paper.url in text
    assert all(line in text for line in bibtex(cited).splitlines())
    assert all(line in text for line in (PROJECT_ROOT / "CITATION.cff").read_text(
        ).splitlines())


@pytest.mark.slow
def test_exercise_solutions_are_folded_until_clicked(site, browser):
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(f"{site}notebooks/03_fidelity.html")
    assert page.locator("div.exercise").count() >= 2
    solution = page.locator("div.solution").first
    body = solution.locator("section, div.cell").first
    assert solution.is_visible() and not body.is_visible(), "solution shown by default"
    solution.locator("button.toggle-button").click()
    body.wait_for(state="visible", timeout=5000)
    ctx.close()


@pytest.mark.slow
def test_results_page_quotes_run_numbers(built_book, site, browser):
    """Every glued number arrived (an unresolved glue would have failed the -W build; this
    checks the text is there) and the fidelity page is screenshotted for review."""
    html = built_book.parent
    text = (html / "book" / "results.html").read_text()
    assert text.count('class="pasted-text"') >= 10
    _open(browser, f"{site}notebooks/03_fidelity.html", ARTIFACTS / "notebooks_03_fidelity.png")
