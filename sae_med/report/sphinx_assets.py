"""Sphinx extension the book loads (``sphinx: extra_extensions: [sae_med.report.sphinx_assets]`` in
_config.yml): de-duplicates each page's script and style assets, and serves plotly.js once
per site (``_static/plotly.min.js``, loaded by every page with a figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTLY_JS = "plotly.min.js"
"""The site's one copy of plotly.js, under ``_static/`` (the notebooks' own copies are
dropped by :func:`sae_med.report.book.drop_plotlyjs`)."""


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


def _load_plotly(app: Any, pagename: str, templatename: str, context: dict, doctree: Any
                 ) -> None:
    """Load the site's plotly.js in the head of a page that has a plotly figure (before
    the figures' inline scripts, which call ``Plotly.newPlot``)."""
    if "plotly-graph-div" in context.get("body", ""):
        context["script_files"] = [*context.get("script_files", []), f"_static/{PLOTLY_JS}"]


def _write_plotly(app: Any, exception: Exception | None) -> None:
    """Write the one copy of plotly.js (the version plotly.py embeds: offline, no CDN)."""
    if exception is None and app.builder.format == "html":
        # deferred: plotly is heavy to import; only the figures need it
        from plotly.offline import get_plotlyjs

        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        (static / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _load_plotly)
    app.connect("html-page-context", _dedupe_assets)
    app.connect("build-finished", _write_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

