"""How to cite: every value the book shows comes from CITATION.cff."""

from __future__ import annotations

import yaml

from sae_med.report.book import PROJECT_ROOT
from sae_med.report.citation import bibtex, read_citation, sentence, substitutions


def test_the_projects_citation_is_read_not_retyped():
    cff = yaml.safe_load((PROJECT_ROOT / "CITATION.cff").read_text())
    cited = read_citation(PROJECT_ROOT / "CITATION.cff")
    paper = cff["preferred-citation"]
    assert cited.software.title == cff["title"] and cff["version"] in cited.software.venue
    assert [a["family-names"] for a in paper["authors"]] == list(cited.paper.authors)
    lines = substitutions(cited)
    assert cff["title"] in lines["cite_software"]
    assert paper["title"] in lines["cite_paper"] and str(paper["year"]) in lines["cite_paper"]
    bib = bibtex(cited)
    assert bib.count("@software{") == 1 and bib.count("@article{") == 1
    assert bib.count("{") == bib.count("}")
    assert f"{{{cff['authors'][0]['name']}}}" in bib  # a group's name kept whole


def test_people_with_given_names_and_no_preferred_citation(tmp_path):
    cff = tmp_path / "CITATION.cff"
    cff.write_text(yaml.safe_dump({
        "cff-version": "1.2.0", "title": "A tool", "version": "2.0",
        "date-released": "2026-01-02", "repository-code": "https://example.org/tool",
        "authors": [{"given-names": "Ada", "family-names": "Lovelace"}]}))
    cited = read_citation(cff)
    assert cited.paper is None and substitutions(cited)["cite_paper"] == "(none given)"
    assert sentence(cited.software) == ("Ada Lovelace (2026). *A tool*. Version 2.0. "
                                        "https://example.org/tool.")
    assert "version = {2.0}" in bibtex(cited) and "@article" not in bibtex(cited)
