"""How to cite sae-med, read from the project's ``CITATION.cff`` (never retyped): the book's
"How to cite" page shows these sentences and the BibTeX (:func:`sae_med.report.book.build_book`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import yaml


class Work(NamedTuple):
    """One citable work of a ``CITATION.cff``: the software, or its preferred citation."""

    title: str
    authors: tuple[str, ...]
    """Display names: ``name``, else ``given-names family-names``, else ``family-names``."""
    year: str
    """Empty when the file gives none (the software entry has no release date)."""
    venue: str
    """``journal`` for an article; ``Version V`` for software."""
    url: str


class Citation(NamedTuple):
    software: Work
    paper: Work | None
    """``preferred-citation``: the paper the software reproduces."""


def _author(entry: dict[str, Any]) -> str:
    if entry.get("name"):
        return str(entry["name"])
    return " ".join(str(entry[k]) for k in ("given-names", "family-names") if entry.get(k))


def _work(entry: dict[str, Any]) -> Work:
    url = entry.get("url") or entry.get("repository-code") or next(
        (i["value"] for i in entry.get("identifiers", []) if i.get("type") == "url"), "")
    venue = entry.get("journal") or (f"Version {entry['version']}" if entry.get("version")
                                     else "")
    year = entry.get("year") or str(entry.get("date-released", ""))[:4]
    return Work(str(entry["title"]), tuple(_author(a) for a in entry.get("authors", [])),
                str(year or ""), str(venue), str(url))


def read_citation(path: Path) -> Citation:
    """The software and its preferred citation from a ``CITATION.cff`` file."""

    cff = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    preferred = cff.get("preferred-citation")
    return Citation(_work(cff), _work(preferred) if preferred else None)


def sentence(work: Work) -> str:
    """One line of MyST: authors (year). *Title*. venue. url."""
    parts = [", ".join(work.authors) + (f" ({work.year})" if work.year else ""),
             f"*{work.title}*", work.venue, work.url]
    return ". ".join(p for p in parts if p) + "."


def _bibtex_entry(kind: str, key: str, work: Work) -> str:
    # braces keep BibTeX from lower-casing the title and from splitting a group's name
    # ("The sae-med contributors") into given and family names
    fields = {"title": f"{{{work.title}}}",
              "author": " and ".join(f"{{{a}}}" for a in work.authors),
              "year": work.year, "url": work.url,
              ("journal" if kind == "article" else "version"): work.venue.removeprefix(
                  "Version ")}
    body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields.items() if v)
    return f"@{kind}{{{key},\n{body}\n}}"


def bibtex(citation: Citation) -> str:
    """BibTeX entries for the software and (when there is one) the paper."""
    entries = [_bibtex_entry("software", "sae_med", citation.software)]
    if citation.paper is not None:
        first = citation.paper.authors[0].split()[-1] if citation.paper.authors else "paper"
        key = "".join(ch for ch in first.lower() if ch.isalnum()) + citation.paper.year
        entries.append(_bibtex_entry("article", key, citation.paper))
    return "\n\n".join(entries) + "\n"


def substitutions(citation: Citation) -> dict[str, str]:
    """The book's MyST substitutions ``cite_software`` and ``cite_paper``."""
    return {"cite_software": sentence(citation.software),
            "cite_paper": sentence(citation.paper) if citation.paper else "(none given)"}
