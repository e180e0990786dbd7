"""Chapter 4's fit sizes, tidy rows, figures, sentence and quoted values on hand-made
results and a synthetic run with a planted R²(e) gap."""

from __future__ import annotations

import pandas as pd
import pytest
from synthetic_runs import TARGETS, synthetic_run

from sae_med.measure.compare import NOT_JUDGED
from sae_med.report.claims import oriented_gaps
from sae_med.report.dark_matter import (
    FIGURE_METRICS,
    VERDICT_WORDS,
    dark_matter_figures,
    dark_matter_fits,
    dark_matter_rows,
    dark_matter_sentence,
    family_value_texts,
)
from sae_med.report.fidelity import family_values, joined


@pytest.fixture(scope="module")
def run():
    """The medical SAE 0.1 better on medical text: its R²(e) 0.1 lower there."""
    return synthetic_run(["medical", "broad"], ["medical", "broad"],
                         {("medical", "medical"): 0.1})


def test_fit_sizes_and_their_ratio():
    doc = {"rows": [
        {"sae_id": "a", "eval_corpus": "medical", "d_model": 9,
         "dark_matter": {"n_train": 300, "n_eval": 50}},
        {"sae_id": "b", "eval_corpus": "broad", "dark_matter": {"n_train": 80, "n_eval": 20}},
        {"sae_id": "c", "eval_corpus": "broad"}]}
    fits = dark_matter_fits(doc)
    assert fits.d_model == 9
    assert fits.table.to_dict("list") == {"SAE": ["a", "b"], "eval corpus": ["medical", "broad"],
                                          "fit tokens": [300, 80],
                                          "held-out tokens": [50, 20]}
    assert fits.ratio == 8.0 and fits.note.startswith("too few")
    doc["rows"][1]["dark_matter"]["n_train"] = 100
    assert dark_matter_fits(doc).note == "enough for a stable fit"
    empty = dark_matter_fits({"rows": []})
    assert (empty.d_model, empty.ratio, len(empty.table)) == (0, 0.0, 0)


def test_rows_lose_their_prefix_and_other_metrics():
    table = pd.DataFrame({"metric": ["fve", "dark_matter.r2_norm", "dark_matter.fvu_sae"],
                          "value": [0.9, 0.5, 0.2]})
    dm = dark_matter_rows(table)
    assert list(dm.metric) == ["r2_norm", "fvu_sae"] and list(dm.value) == [0.5, 0.2]
    assert list(table.metric)[1] == "dark_matter.r2_norm"  # the input is left alone


def test_one_figure_per_score_with_a_line_per_family(run):
    figs = dark_matter_figures(run.families)
    assert [f.layout.title.text for f in figs] == [f"{label} vs L0"
                                                  for label in FIGURE_METRICS.values()]
    assert len(figs[0].data) == 4  # two training x two evaluation corpora
    first = figs[0].data[0]
    assert list(first.x) == list(TARGETS)  # the synthetic L0 is the target itself


def test_sentence_quotes_the_verdict_and_the_gaps(run):
    gaps = oriented_gaps(run.gaps, "medical", "broad")
    text = dark_matter_sentence(gaps, "supported", "medical")
    assert text.startswith("On held-out medical text, the medical SAE's error "
                           + VERDICT_WORDS["supported"])
    assert "R²(e) gap by target L0: -0.100; -0.100" in text
    assert "at matched FVE" in text
    assert VERDICT_WORDS[NOT_JUDGED] in dark_matter_sentence(gaps, NOT_JUDGED, "medical")


def test_quoted_values_are_each_family_by_target(run):
    values = family_value_texts(run.families, "medical", "broad")
    assert list(values) == ["r2e_medical_sae", "r2e_broad_sae", "fvu_nl_medical_sae",
                            "fvu_nl_broad_sae"]
    assert values["r2e_broad_sae"] == joined(
        family_values(run.families, "dark_matter.r2_error_mean", "broad", "medical"))
    assert values["r2e_medical_sae"].count(", ") == len(TARGETS) - 1
    assert values["fvu_nl_medical_sae"] == ""  # not in the synthetic run
