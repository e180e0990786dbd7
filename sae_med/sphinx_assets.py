"""Sphinx extension the book loads (``sphinx: extra_extensions: [sae_med.sphinx_assets]`` in
_config.yml): de-duplicates each page's script and style assets."""

from __future__ import annotations

from typing import Any


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

