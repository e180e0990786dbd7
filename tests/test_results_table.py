"""benchmarks/results_table.py on synthetic results files (home advantages planted):
the tables RESULTS.md quotes hold both eval corpora, every pair's gaps, each side's home
advantage, the difference-in-differences and placebo contrasts and the mix's verdicts."""

from __future__ import annotations

import json

import pytest
from synthetic_runs import benchmark_script, write_synthetic_results

from sae_med.config import load_config
from sae_med.report.book import PROJECT_ROOT

SHIFT = {("medical", "medical"): 0.10, ("broad", "broad"): 0.02,
         ("mixed_10", "medical"): 0.05, ("go", "go"): 0.10}


@pytest.fixture(scope="module")
def results_table():
    return benchmark_script("results_table")


def section(out: str, title: str) -> str:
    """The printed table under ``title`` (up to the next blank line after it)."""
    body = out.split(f"\n{title}\n\n", 1)[1]
    return body.split("\n\n", 1)[0]


def test_default_run_tables(results_table, tmp_path, capsys):
    path = write_synthetic_results(tmp_path / "results.json",
                                   load_config(PROJECT_ROOT / "configs" / "smoke.yaml"), SHIFT)
    results_table.comparisons(str(path))
    out = capsys.readouterr().out
    matrix = section(out, "Every family on every eval corpus (across-seed means)")
    assert "| medical " in matrix.splitlines()[0] and "| broad " in matrix.splitlines()[0]
    assert matrix.count("mixed_10") == 4  # 2 metrics x 2 targets
    gaps = section(out, "Gaps at each target L0 (training corpus minus versus)")
    for pair in ("'medical', 'broad'", "'medical', 'mixed_10'", "'broad', 'mixed_10'"):
        assert pair in gaps  # every pair of training corpora
    home = section(out, "Home advantage (own SAE minus another, on own text), basis l0_target")
    assert "| ('broad', 'medical', 10.0) " in home and "0.020 [" in home
    did = section(out, "Difference-in-differences (first's home advantage minus second's), "
                       "basis l0_target")
    assert did.count("0.080 [") >= 2  # 0.10 - 0.02 at each target
    verdicts = section(out, "Difference-in-differences verdicts")
    assert "typical-token FVE | supported" in verdicts.replace("  ", "")
    cost = section(out, "What mixed_10 gives up: mixed_10 minus broad on broad text")
    assert "-0.020 [" in cost
    for title in ("Home advantage (own SAE minus another, on own text), basis fve",
                  "Difference-in-differences (first's home advantage minus second's), "
                  "basis fve", "medical minus mixed_10 on medical text, basis fve",
                  "medical minus mixed_10 on medical text, basis fve_typical"):
        assert " of 200 (" in section(out, title), title  # the share left out, per row
    assert "Placebo verdicts" not in out  # no placebo domain in the default
    for title in ("Gaps at matched FVE", "Gaps at matched typical FVE (a report beside the "
                                         "claims, not judged)"):
        matched = section(out, title)
        assert "replicates left out" in matched.splitlines()[0]
        assert " of 200 (" in matched  # each row's drop share of the synthetic 200


def test_a_schema_7_file_prints_without_the_typical_table(results_table, tmp_path, capsys):
    """Results written before matched typical FVE (schema 7) still read: the table at
    matched typical FVE is left out, the rest printed."""
    path = write_synthetic_results(tmp_path / "results.json",
                                   load_config(PROJECT_ROOT / "configs" / "smoke.yaml"), SHIFT)
    doc = json.loads(path.read_text())
    doc["schema_version"] = 7
    for key in ("families", "gaps", "contrasts"):
        doc[key] = [{k: v for k, v in r.items() if k != "fve_typical"} for r in doc[key]
                    if r.get("basis") != "fve_typical"]
    path.write_text(json.dumps(doc))
    results_table.comparisons(str(path))
    out = capsys.readouterr().out
    assert "Gaps at matched FVE" in out and "matched typical FVE" not in out


def test_domains_run_prints_placebo_verdicts(results_table, tmp_path, capsys):
    path = write_synthetic_results(
        tmp_path / "results.json", load_config(PROJECT_ROOT / "configs" / "domains.yaml"),
        SHIFT)
    results_table.comparisons(str(path))
    out = capsys.readouterr().out
    placebo = section(out, "Placebo verdicts")
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in placebo.splitlines()[2:]}
    # wordnet and austen are parts of the broad mix: genre controls, never judged
    assert rows == {"go (biology)": "not supported", "foldoc (computing)": "supported"}
    excess = section(out, "Home excess: (medical minus broad on medical text) minus (placebo "
                          "minus broad on placebo text); genre controls in the broad mix "
                          "are not judged")
    roles = {line.split("|")[1].split("'")[5]: line.split("|")[1].split("'")[1]
             for line in excess.splitlines()[2:]}  # index ('role', 'first', 'second', L0)
    assert roles == {"go": "placebo domain (judged)", "foldoc": "placebo domain (judged)",
                     "wordnet": "genre control: part of the reference mix (not judged)",
                     "austen": "genre control: part of the reference mix (not judged)"}


def test_several_models_get_did_and_mix_verdicts(results_table, tmp_path, capsys):
    smoke = load_config(PROJECT_ROOT / "configs" / "smoke.yaml")
    paths = [str(write_synthetic_results(tmp_path / f"{i}.json", smoke, SHIFT))
             for i in range(2)]
    results_table.models(paths)
    out = capsys.readouterr().out
    assert "supported" in section(out, "Difference-in-differences, per model")
    assert "(vs mixed_10)" in section(
        out, "The paper's claims against each mix (mixed_10), per model")
