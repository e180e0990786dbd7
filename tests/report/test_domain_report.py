"""The "Domain or home field?" report on synthetic runs whose home advantages are planted:
each side's advantage on its own text, the difference-in-differences and placebo verdicts,
the mix, the heatmap, the sentence, and a domains run that is absent or outdated."""

from __future__ import annotations

import dataclasses
import json

import pytest
from synthetic_runs import synthetic_run, write_synthetic_results

from sae_med.config import load_config
from sae_med.measure.compare import NOT_JUDGED
from sae_med.report.claims import claim, contrast_verdict, placebo_verdict
from sae_med.report.domain_report import (
    DOMAINS_COMMAND,
    MIXED_50_COMMAND,
    MixedCorpus,
    contrast_table,
    did_clause,
    did_direction,
    did_verdict_table,
    did_verdicts_by_model,
    domain_sentence,
    family_matrix_table,
    genre_controls,
    home_advantage_table,
    home_advantages,
    home_excess_table,
    home_matrix_figures,
    home_matrix_rows,
    load_domains_run,
    load_mixed_50_run,
    matching_domains_run,
    matrix_figures,
    matrix_heatmap,
    mix_cost_tables,
    mixed_corpora,
    mixed_gap_tables,
    mixed_verdict_table,
    mixed_verdicts_by_model,
    own_text_table,
    page_verdicts,
    pair_table,
    placebo_corpora,
    placebo_summary,
    read_model_runs,
    side_mixed_verdict_table,
    training_dead_fractions,
)
from sae_med.report.notebook import DROPPED_COLUMN

TRAIN = ["medical", "broad", "mixed_10"]
EVAL = ["medical", "broad"]
DOMAINS = ["medical", "broad", "mixed_10", "go", "foldoc"]
DOMAINS_EVAL = ["medical", "broad", "go", "foldoc"]
MIX = [MixedCorpus("mixed_10", 0.1)]
CONTROLS = ["medical", "broad", "go", "wordnet"]
CONTROLS_EVAL = CONTROLS


def default_run(medical_home: float, broad_home: float):
    """The default's three SAE families; the mix sits halfway on medical text."""
    return synthetic_run(TRAIN, EVAL, {("medical", "medical"): medical_home,
                                       ("broad", "broad"): broad_home,
                                       ("mixed_10", "medical"): medical_home / 2})


@pytest.fixture(scope="module")
def domains_run():
    """go wins at home as much as medicine, foldoc by far less."""
    return synthetic_run(DOMAINS, DOMAINS_EVAL, {
        ("medical", "medical"): 0.10, ("broad", "broad"): 0.02, ("go", "go"): 0.10,
        ("foldoc", "foldoc"): 0.03})


def test_each_side_wins_at_home_by_what_was_planted():
    run = default_run(0.10, 0.02)
    home = home_advantages(run.gaps, EVAL, TRAIN)
    assert (home.train_corpus == home.eval_corpus).all()  # every row on its side's text
    sel = home[(home.metric == "fve_typical") & (home.basis == "l0_target")]
    planted = {("medical", "broad"): 0.10, ("medical", "mixed_10"): 0.05,
               ("broad", "medical"): 0.02, ("broad", "mixed_10"): 0.02}
    for (side, other), value in planted.items():
        got = sel[(sel.train_corpus == side) & (sel.versus == other)]
        assert len(got) == 2 and got.value.to_numpy() == pytest.approx([value] * 2, abs=2e-3)
        assert (got.low < got.value).all() and (got.value < got.high).all()
    table = home_advantage_table(run.gaps, EVAL, TRAIN, ["fve_typical", "delta_ce"])
    assert table.index.names == ["home SAE, on its own text", "versus", "l0_target"]
    assert table.loc[("medical", "broad", 10.0), "fve_typical"].startswith("0.100 [")
    assert table.loc[("medical", "broad", 10.0), "delta_ce"].startswith("-0.100 [")


def test_a_run_masking_typical_tokens_at_an_undeclared_ratio_is_shown_but_not_judged(
        tmp_path):
    """The rules judging ``fve_typical`` were declared with eval.massive_norm_ratio 3: a run
    that overrode it keeps its rows, renamed, and the claim it would pass has no interval."""
    from sae_med.measure.results import load_comparisons

    smoke = load_config("configs/smoke.yaml")
    shift = {("medical", "medical"): 0.10, ("broad", "broad"): 0.02}
    declared = load_comparisons(write_synthetic_results(tmp_path / "a.json", smoke, shift))
    assert contrast_verdict(declared, "did_fve_typical", "medical", "broad") == "supported"
    other = dataclasses.replace(smoke, eval=dataclasses.replace(smoke.eval,
                                                                massive_norm_ratio=2.5))
    moved = load_comparisons(write_synthetic_results(tmp_path / "b.json", other, shift))
    for frame in (moved.gaps, moved.contrasts):
        assert "fve_typical" not in set(frame.metric)
        assert "fve_typical@2.5" in set(frame.metric)
    assert contrast_verdict(moved, "did_fve_typical", "medical", "broad") != "supported"
    assert contrast_verdict(moved, "did_delta_ce", "medical", "broad") == contrast_verdict(
        declared, "did_delta_ce", "medical", "broad")  # other metrics are judged as before


def test_equal_home_advantages_leave_the_did_unresolved():
    same = default_run(0.05, 0.05)
    assert contrast_verdict(same, "did_fve_typical", "medical", "broad") == "not supported"
    assert "is not told apart from the broad SAE's" in did_clause(
        same, "medical", "broad", "fve_typical")
    larger = default_run(0.10, 0.02)
    assert contrast_verdict(larger, "did_fve_typical", "medical", "broad") == "supported"
    clause = did_clause(larger, "medical", "broad", "delta_ce")
    assert clause.startswith("its home advantage exceeds the broad SAE's") and "-0.080 [" \
        in clause


def test_a_reversal_is_reported_beside_the_verdict_which_it_does_not_change():
    """The broad side winning at home by more is "not supported" (the rule is unchanged);
    the direction column says it is reversed, with ΔCE's sign turned round."""
    reversed_ = default_run(0.02, 0.10)
    assert contrast_verdict(reversed_, "did_delta_ce", "medical", "broad") == "not supported"
    for metric in ("fve_typical", "delta_ce"):
        assert did_direction(reversed_, "medical", "broad", metric) == \
            "reversed at every target L0"
        assert did_direction(default_run(0.10, 0.02), "medical", "broad", metric) == \
            "favours the domain at every target L0"
        assert did_direction(default_run(0.05, 0.05), "medical", "broad", metric) == \
            "unresolved at every target L0"
    table = did_verdict_table(reversed_, "medical", "broad")
    assert list(table.columns) == ["verdict", "direction (reported, not judged)"]
    assert set(table.verdict) == {"not supported"}
    rows = page_verdicts(reversed_, "medical", "broad", MIX, None, [])
    assert rows["direction_did_delta_ce"] == "reversed at every target L0"
    assert rows["verdict_did_delta_ce"] == "not supported"


def test_verdicts_by_model_read_each_replication_on_disk_and_judge_it_apart(tmp_path):
    """A smoke run whose replication is absent gets one column and a note with the
    command; written (a reversed home field on it), the replication gets its own column,
    judged from its own file."""
    smoke = load_config("configs/smoke.yaml", [f"output_dir={tmp_path}"])
    run = default_run(0.10, 0.02)
    absent = read_model_runs(smoke, run)
    assert len(absent.runs) == 1 and "sae-med run of this config" in absent.note
    rep = next(iter(smoke.replication_configs().values()))
    write_synthetic_results(rep.run_path / "results.json", rep, {
        ("medical", "medical"): 0.02, ("broad", "broad"): 0.10,
        ("mixed_10", "medical"): 0.01})
    both = read_model_runs(smoke, run)
    assert both.note == "" and [r.cfg.name for r in both.runs] == [smoke.name, rep.name]
    did = did_verdicts_by_model(both.runs, "medical", "broad")
    labels = [r.label for r in both.runs]
    first = claim("did_fve_typical").text
    assert did.loc[first, labels].tolist() == ["supported", "not supported"]
    assert did.loc[first, "same verdict on every model"] == "no"
    mixed = mixed_verdicts_by_model(both.runs, "medical")
    assert mixed.loc["The domain SAE explains more variance (FVE) (vs mixed_10)",
                     labels].tolist() == ["supported", "supported"]
    wordnet = load_config("configs/wordnet_control.yaml")  # trains no mix: a note
    assert mixed_verdicts_by_model([both.runs[0]._replace(cfg=wordnet)],
                                   "medical").columns.tolist() == ["note"]


def test_the_50_percent_mix_is_read_from_its_own_run_or_its_command_printed(tmp_path):
    """Absent: a one-cell note with the command. Present (a synthetic mixed_50 run where
    the mix closes most of the gap), its own mix is found and judged against medicine."""
    absent = load_mixed_50_run(tmp_path / "results.json")
    assert absent.run is None and MIXED_50_COMMAND in absent.note
    note = side_mixed_verdict_table(absent, "medical", "broad")
    assert note.columns.tolist() == ["note"] and MIXED_50_COMMAND in note.note.iloc[0]
    path = write_synthetic_results(tmp_path / "results.json",
                                   load_config("configs/mixed_50.yaml"), {
                                       ("medical", "medical"): 0.10, ("broad", "broad"): 0.02,
                                       ("mixed_50", "medical"): 0.09})
    present = load_mixed_50_run(path)
    assert present.run is not None and "mixed_50" in present.note
    table = side_mixed_verdict_table(present, "medical", "broad")
    assert list(table.columns) == ["vs broad (no medical text)",
                                   "vs mixed_50 (medical at 50% of tokens)"]
    assert table.loc["The domain SAE explains more variance (FVE)"].tolist() == [
        "supported", "supported"]


def test_the_mix_is_found_and_judged_like_the_broad_sae():
    assert mixed_corpora(load_config("configs/smoke.yaml"), "medical") == MIX
    assert mixed_corpora(load_config("configs/wordnet_control.yaml"), "medical") == []
    run = default_run(0.10, 0.02)
    table = mixed_verdict_table(run, "medical", "broad", MIX)
    assert list(table.columns) == ["vs broad (no medical text)",
                                   "vs mixed_10 (medical at 10% of tokens)"]
    assert table.loc["The domain SAE explains more variance (FVE)"].tolist() == [
        "supported", "supported"]
    rows = page_verdicts(run, "medical", "broad", MIX, None, [])
    assert rows["mixed_label"] == "mixed_10 (medical at 10% of its tokens)"
    assert rows["verdict_mixed_fve"] == "supported"
    assert rows["mixed_cost_sentence"].startswith(  # broad's planted home advantage
        "The mixed_10 SAE loses to the broad SAE on held-out broad text (typical-token FVE "
        "difference by target L0: -0.020 [")


def test_placebos_are_declared_not_positional():
    """Corpora the broad SAE trained on (parts of its mix) are genre controls, whatever
    their place in the config; only the others are placebo domains."""
    cfg = load_config("configs/domains.yaml")
    assert placebo_corpora(cfg) == ["go", "foldoc"]
    assert genre_controls(cfg) == ["wordnet", "austen"]
    order = ["medical", "broad", "austen", "go", "wordnet"]
    reordered = dataclasses.replace(cfg, train_corpora=order, eval_corpora=order)
    assert placebo_corpora(reordered) == ["go"]
    assert genre_controls(reordered) == ["austen", "wordnet"]
    assert genre_controls(load_config("configs/smoke.yaml")) == []


def test_genre_controls_are_shown_labelled_and_never_judged():
    """A synthetic domains run where wordnet, a part of the broad mix, wins at home by
    little: it is named in the sentence and the results cell, never given a verdict."""
    run = synthetic_run(CONTROLS, CONTROLS_EVAL, {
        ("medical", "medical"): 0.10, ("broad", "broad"): 0.02, ("go", "go"): 0.10,
        ("wordnet", "wordnet"): 0.01})
    rows = page_verdicts(default_run(0.10, 0.02), "medical", "broad", MIX, run, ["go"],
                         ["wordnet"])
    assert rows["verdict_placebo_fve_typical"] == (
        "go: not supported (not judged, genre controls in the broad mix: wordnet)")
    sentence = rows["domain_verdict_sentence"]
    assert ("Genre controls the broad SAE has trained on (parts of its mix, so not "
            "placebos): wordnet (broad) beats the broad SAE at home by 0.010 [") in sentence
    assert "wordnet's excess" not in sentence and "medical's excess over it" in sentence
    table = home_excess_table(run.contrasts, ["go"], ["wordnet"], ["fve_typical"])
    assert table.index.names[:3] == ["role", "first", "second"]
    assert {(r, s) for r, _, s, _ in table.index} == {
        ("placebo domain (judged)", "go"),
        ("genre control: part of the reference mix (not judged)", "wordnet")}
    assert home_excess_table(run.contrasts, ["go"], [], ["fve_typical"]).index \
        .get_level_values("second").unique().tolist() == ["go"]


def test_placebo_verdicts_follow_the_planted_home_advantages(domains_run):
    assert placebo_verdict(domains_run, "home_excess_fve_typical", "medical", "go",
                           "broad") == "not supported"
    summary = placebo_summary(domains_run, "medical", "broad", ["go", "foldoc"],
                              "home_excess_fve_typical")
    assert summary == "go: not supported; foldoc: supported"
    sentence = domain_sentence(default_run(0.10, 0.02), "medical", "broad", MIX,
                               domains_run, ["go", "foldoc"])
    assert "go (biology) beats the broad SAE at home by 0.100 [" in sentence
    assert "foldoc (computing) beats the broad SAE at home by 0.030 [" in sentence
    assert "saw medical text at 10% of its tokens (mixed_10)" in sentence


def test_without_the_domains_run_the_sentence_says_how_to_make_it(tmp_path):
    status = load_domains_run(tmp_path / "results.json")
    assert status.run is None and DOMAINS_COMMAND in status.note
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 1}))
    stale = load_domains_run(tmp_path / "results.json")
    assert stale.run is None and "rescores" in stale.note
    law = tmp_path / "law" / "results.json"
    write_synthetic_results(law, load_config("configs/domains.yaml"), {})
    other = matching_domains_run(load_domains_run(law), "law", "broad")
    assert other.run is None and "compares medical vs broad, not law vs broad" in other.note
    assert matching_domains_run(load_domains_run(law), "medical", "broad").run is not None
    rows = page_verdicts(default_run(0.10, 0.02), "medical", "broad", MIX, None, [])
    assert rows["verdict_placebo_fve_typical"] == (
        f"not run: the domains run is absent ({DOMAINS_COMMAND} produces it)")
    assert rows["domain_verdict_sentence"].endswith(f"({DOMAINS_COMMAND} produces it).")


def test_sae_below_the_quality_bar_are_not_judged():
    run = default_run(0.10, 0.02)
    bad = run._replace(families=run.families.assign(
        value=run.families.value.where(run.families.metric != "delta_ce", 3.0)))
    rows = page_verdicts(bad, "medical", "broad", MIX, None, [])
    assert {rows[k] for k in rows if k.startswith(("verdict_did", "verdict_mixed"))} == {
        NOT_JUDGED}


def test_matrix_table_and_heatmap_hold_every_family_on_every_text(domains_run):
    table = family_matrix_table(domains_run.families, ["delta_ce"], DOMAINS, DOMAINS_EVAL)
    assert list(table.columns) == DOMAINS_EVAL
    assert [i[2] for i in table.index[:len(DOMAINS)]] == DOMAINS
    fig = matrix_heatmap(domains_run.families, "delta_ce", DOMAINS, DOMAINS_EVAL)
    assert len(fig.data) == 2  # one panel per target L0
    assert len(fig.layout.shapes) == 2 * len(DOMAINS_EVAL)  # home cells outlined
    home = fig.data[0]
    row, col = DOMAINS.index("go"), DOMAINS_EVAL.index("go")
    cell = table.loc[("delta_ce", 10.0, "go"), "go"]
    assert home.text[row][col] == cell.replace(" [", "<br>[")
    assert fig.layout.coloraxis.reversescale  # lower ΔCE is better: colours turn round


def test_home_matrix_cells_are_each_column_s_own_sae_minus_the_row_s(domains_run):
    cells = home_matrix_rows(domains_run.gaps, DOMAINS_EVAL, DOMAINS)
    fig = matrix_heatmap(cells, "fve_typical", DOMAINS, DOMAINS_EVAL)
    z = fig.data[0].z  # target L0 10: rows DOMAINS, columns DOMAINS_EVAL
    col = DOMAINS_EVAL.index("go")
    assert z[DOMAINS.index("go")][col] is None  # no SAE is compared with itself
    assert z[DOMAINS.index("broad")][col] == pytest.approx(0.10, abs=3e-3)
    assert z[DOMAINS.index("foldoc")][DOMAINS_EVAL.index("foldoc")] is None
    assert z[DOMAINS.index("medical")][DOMAINS_EVAL.index("foldoc")] == pytest.approx(
        0.03, abs=3e-3)


def test_matrix_figures_are_one_heatmap_per_matrix_metric(domains_run):
    figs = matrix_figures(domains_run.families, DOMAINS, DOMAINS_EVAL)
    assert [f.layout.title.text for f in figs] == [
        "ΔCE (nats per token, lower is better): trained on (row) × evaluated on (column)",
        "typical-token FVE (higher is better): trained on (row) × evaluated on (column)"]
    assert figs[0].data[0].z == matrix_heatmap(domains_run.families, "delta_ce", DOMAINS,
                                               DOMAINS_EVAL).data[0].z
    homes = home_matrix_figures(domains_run.gaps, DOMAINS_EVAL, DOMAINS, DOMAINS_EVAL)
    assert [f.layout.title.text for f in homes] == [
        "Home advantage in ΔCE: the column's own SAE minus the row's, on the column's text",
        "Home advantage in typical-token FVE: the column's own SAE minus the row's, on the "
        "column's text"]
    cells = home_matrix_rows(domains_run.gaps, DOMAINS_EVAL, DOMAINS)
    assert homes[1].data[0].z == matrix_heatmap(cells, "fve_typical", DOMAINS,
                                                DOMAINS_EVAL).data[0].z


def test_matched_tables_show_the_share_of_replicates_left_out():
    """The most replicates any contrast or gap of a row left out, of n_boot, at matched
    FVE: planted on one metric of one row, the row shows it; at target L0, no column."""
    run = default_run(0.10, 0.02)
    c = run.contrasts
    first_fve = c[(c.kind == "did") & (c.basis == "fve")].fve.min()
    hit = (c.kind == "did") & (c.basis == "fve") & (c.fve == first_fve) & (
        c.metric == "delta_ce")
    planted = c.assign(dropped=c.dropped.mask(hit, 30))
    table = contrast_table(planted, "did", ["fve_typical", "delta_ce"], "fve", dropped=True)
    assert table[DROPPED_COLUMN].tolist() == ["30 of 200 (15.0%)", "0 of 200 (0.0%)"]
    assert DROPPED_COLUMN not in contrast_table(planted, "did", ["delta_ce"]).columns
    g = run.gaps
    home = home_advantage_table(g.assign(dropped=g.dropped.mask(g.basis == "fve", 4)),
                                EVAL, TRAIN, ["delta_ce"], "fve", dropped=True)
    assert (home[DROPPED_COLUMN] == "4 of 200 (2.0%)").all()


def test_mixed_gap_and_cost_tables_are_one_pair_table_per_mix_and_basis():
    run = default_run(0.10, 0.02)
    tables = mixed_gap_tables(run.gaps, "medical", MIX)
    assert [t.caption for t in tables] == [
        "medical minus mixed_10 on medical text, basis l0_target",
        "medical minus mixed_10 on medical text, basis fve",
        "medical minus mixed_10 on medical text, basis fve_typical"]
    assert not tables[0].table.empty and DROPPED_COLUMN not in tables[0].table.columns
    assert tables[1].table.equals(pair_table(run.gaps, "medical", "mixed_10",
                                             ["l0", "delta_ce", "loss_recovered"], "fve",
                                             "medical", dropped=True))
    # matched on typical-token FVE too: the pooled FVE left there is a column
    assert list(tables[2].table.columns) == ["fve", "l0", "delta_ce", "loss_recovered",
                                             DROPPED_COLUMN]
    assert (tables[2].table[DROPPED_COLUMN] == "0 of 200 (0.0%)").all()
    costs = mix_cost_tables(run.gaps, "broad", MIX)
    assert len(costs) == 1
    assert costs[0].equals(pair_table(run.gaps, "mixed_10", "broad",
                                      ["fve", "fve_typical", "delta_ce"],
                                      eval_corpus="broad"))
    assert mixed_gap_tables(run.gaps, "medical", []) == []


def test_own_text_table_shows_each_side_on_its_own_text_with_training_dead(tmp_path):
    """Issue 31's equal baselines: each side on its own text only, and the dead fraction
    each SAE's training log ended with (mean, min–max over seeds)."""
    import pandas as pd

    run = default_run(0.10, 0.02)
    rows = []
    for corpus, dead in (("medical", (0.1, 0.2, 0.3)), ("broad", (0.0, 0.0, 0.3))):
        for r, d in enumerate(dead):
            folder = tmp_path / corpus / f"seed_{r}" / "l0_10"
            folder.mkdir(parents=True)
            (folder / "metrics.jsonl").write_text(
                json.dumps({"step": 1, "dead_frac": 0.9}) + "\n"
                + json.dumps({"step": 2, "dead_frac": d}) + "\n")
            rows.append({"sae_id": f"{corpus}/{r}", "sae_dir": str(folder),
                         "train_corpus": corpus, "l0_target": 10.0, "replicate": r})
    rows.append({"sae_id": "gone", "sae_dir": str(tmp_path / "gone"),
                 "train_corpus": "medical", "l0_target": 80.0, "replicate": 0})
    dead = training_dead_fractions(pd.DataFrame(rows))
    assert sorted(dead.dead_frac) == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3, 0.3])
    table = own_text_table(run.families, EVAL, dead)
    assert list(table.index) == [("medical", 10.0), ("medical", 80.0), ("broad", 10.0),
                                 ("broad", 80.0)]
    own = run.families[(run.families.train_corpus == "broad")
                       & (run.families.eval_corpus == "broad")
                       & (run.families.metric == "fve") & (run.families.l0_target == 10.0)]
    assert table.loc[("broad", 10.0), "fve"].startswith(f"{own.value.iloc[0]:.3f} [")
    assert table.loc[("medical", 10.0), "training-window dead fraction"] == \
        "0.200 (0.100–0.300)"
    assert table.loc[("broad", 10.0), "training-window dead fraction"] == \
        "0.100 (0.000–0.300)"
    assert pd.isna(table.loc[("medical", 80.0), "training-window dead fraction"])
