"""Chapter 3's values and figure on a synthetic run with a planted FVE gap: the gap ranges,
the families' values by target, the home-advantage sentence, the own-text baselines, the
paper's table and overlay."""

from __future__ import annotations

import json
import math

import pandas as pd
import plotly.graph_objects as go
import pytest
from synthetic_runs import TARGETS, synthetic_run

from sae_med.measure.bootstrap import Interval
from sae_med.report.claims import oriented_gaps
from sae_med.report.fidelity import (
    PAPER_SAES,
    family_values,
    fidelity_values,
    home_advantage_sentence,
    joined,
    own_text_baselines,
    paper_fve_gap,
    paper_table,
    targets_text,
    value_range,
    with_paper,
)


@pytest.fixture(scope="module")
def run():
    """The medical SAE 0.1 better on medical text, equal on broad text."""
    return synthetic_run(["medical", "broad"], ["medical", "broad"],
                         {("medical", "medical"): 0.1})


def test_family_values_are_the_across_seed_means_by_target(run):
    fam = run.families
    want = [float(fam[(fam.basis == "l0_target") & (fam.metric == "fve")
                      & (fam.train_corpus == "medical") & (fam.eval_corpus == "medical")
                      & (fam.l0_target == t)].value.iloc[0]) for t in TARGETS]
    assert family_values(fam, "fve", "medical", "medical") == want
    assert family_values(fam, "no_such_metric", "medical", "medical") == []


def test_small_formatters():
    assert joined([0.12345, 1.0]) == "0.123, 1.000"
    assert joined([]) == ""
    assert targets_text([10.0, 80.0]) == "10, 80"
    assert targets_text([3.0, 30.5], " → ") == "3 → 30.5"
    assert value_range([Interval(0.2, 0.1, 0.3), Interval(-0.1, None, None)]) == (-0.1, 0.2)
    assert all(math.isnan(v) for v in value_range([]))


def test_fidelity_values_hold_the_planted_gap(run):
    gaps = oriented_gaps(run.gaps, "medical", "broad")
    results = pd.DataFrame([{"metric": "massive_tokens", "train_corpus": "medical",
                             "eval_corpus": "medical", "l0_target": TARGETS[0],
                             "value": 7.0}])
    v = fidelity_values(run, results, gaps, list(TARGETS), "medical", "broad", 5.0)
    assert v["fve_gap_medical_min"] == pytest.approx(0.1, abs=0.01)
    assert v["fve_gap_medical_max"] == pytest.approx(0.1, abs=0.01)
    assert abs(v["fve_gap_broad_max"]) < 0.01
    assert v["verdict_fve"] == "supported"
    assert v["fve_typical_sentence"].endswith(
        "(7 of the medical evaluation tokens are above 5 × the median norm.)")
    assert v["dce_medical_sae_on_medical"] == joined(
        family_values(run.families, "delta_ce", "medical", "medical"))
    assert v["lr_mean_broad_sae_on_medical"] == ""  # no such metric in the synthetic run
    assert len(v["fve_gap_table"])


def test_home_sentence_names_each_side_that_has_a_home(run):
    both = home_advantage_sentence(run.gaps, ["medical", "broad"], "medical", "broad")
    assert both.count(" text (") == 4  # two metrics x two sides
    assert both.startswith("the medical SAE")
    one = home_advantage_sentence(run.gaps, ["medical"], "medical", "broad", ["fve"])
    assert one.count(" text (") == 1 and one.startswith("the medical SAE")


def test_own_text_baselines_read_each_sides_own_text_and_training_log(run, tmp_path):
    rows = []
    for corpus, dead in (("medical", 0.25), ("broad", 0.05)):
        folder = tmp_path / corpus
        folder.mkdir()
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 9, "dead_frac": dead}))
        for metric in ("fve", "delta_ce"):  # one SAE, several rows: counted once
            rows.append({"sae_id": corpus, "sae_dir": str(folder), "train_corpus": corpus,
                         "l0_target": TARGETS[0], "replicate": 0, "metric": metric})
    table = own_text_baselines(run.families, pd.DataFrame(rows), ["medical", "broad"])
    assert list(table.index) == [(c, t) for c in ("medical", "broad") for t in TARGETS]
    own = family_values(run.families, "fve", "broad", "broad")[0]
    assert table.loc[("broad", TARGETS[0]), "fve"].startswith(f"{own:.3f} [")
    dead = table["training-window dead fraction"]
    assert dead[("medical", TARGETS[0])] == "0.250 (0.250–0.250)"
    assert dead[("broad", TARGETS[0])] == "0.050 (0.050–0.050)"
    assert pd.isna(dead[("medical", TARGETS[1])])  # no training log for that SAE


def test_paper_table_and_overlay():
    paper = paper_table()
    assert list(paper.SAE.unique()) == list(PAPER_SAES)
    assert paper["ΔCE"].iloc[0] == pytest.approx(0.176)
    lo, hi = paper_fve_gap(paper)
    assert (lo, hi) == pytest.approx((0.095, 0.218))
    fig = with_paper(go.Figure(go.Scatter(x=[1, 2], y=[0.5, 0.6], name="mine")), paper)
    assert [t.name for t in fig.data] == ["ours: mine", *PAPER_SAES]
    assert list(fig.data[1].y) == list(paper.FVE[:4])
    assert fig.data[2].line.dash == "dot"
