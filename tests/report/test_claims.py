"""The paper's claims as verdicts per model, and whether they replicate across models."""

import functools
import json
from pathlib import Path

import pandas as pd
import pytest

from sae_med.config import load_config
from sae_med.interpret.autointerp import compare_scores
from sae_med.measure.compare import NOT_JUDGED
from sae_med.measure.results import ComparisonTables
from sae_med.report.claims import (
    CLAIMS,
    COMPARISON_COMPUTATION,
    COMPUTATIONS,
    CONCEPT,
    CONCEPT_CLAIM,
    DCE_BAR_NATS,
    DID_CLAIMS,
    HOME_EXCESS_CLAIMS,
    L0_TREND_COMPUTATION,
    RECORD_COMMAND,
    RESAMPLING_COMPUTATION,
    SENSITIVITY_CHECKS,
    Claim,
    ModelRun,
    all_claims,
    bar_dce,
    claim,
    claim_verdict,
    computation_fingerprint,
    concept_verdict,
    contrast_verdict,
    dropped_sentence,
    l0_trend,
    placebo_verdict,
    record_frozen,
    replication_sentence,
    rule_fingerprint,
    step_intervals,
    support_count,
    verdict_table,
    verdicts_frame,
)
from sae_med.report.notebook import dce_bar_sentence, gap_table_by_model, step_table


def gap(metric, value, low, high, basis="l0_target", at=20.0, stored="medical"):
    """One gap row as results.json stores it (``stored`` minus the other family)."""
    if stored != "medical":  # the same gap seen from the other family
        value, low, high = -value, -high, -low
    return {"train_corpus": stored, "versus": "broad" if stored == "medical" else "medical",
            "eval_corpus": "medical", "metric": metric, "basis": basis,
            "l0_target": at if basis == "l0_target" else None,
            "fve": at if basis == "fve" else None, "value": value, "low": low, "high": high,
            "excludes_zero": low > 0 or high < 0}


def tables(rows, families=()):
    return ComparisonTables(pd.DataFrame(list(families)), pd.DataFrame(rows), pd.DataFrame())


def run(label, rows, families=()):
    return ModelRun(label, load_config(None), tables(rows, families))


# medical better on FVE at both targets; loss better at L0 but not at matched FVE; dark
# matter (R² of the error, lower is better) better everywhere, stored broad-minus-medical
GOOD = [gap("fve", 0.05, 0.02, 0.08), gap("fve", 0.04, 0.01, 0.07, at=40.0),
        gap("loss_recovered", 0.03, 0.01, 0.05),
        gap("loss_recovered", 0.01, -0.01, 0.03, basis="fve", at=0.7),
        gap("dark_matter.r2_error_mean", -0.2, -0.3, -0.1, stored="broad"),
        gap("dark_matter.r2_error_mean", -0.1, -0.15, -0.05, basis="fve", at=0.7,
            stored="broad")]
WEAK = [gap("fve", 0.05, -0.02, 0.08), *GOOD[1:]]


def test_claim_verdicts_on_known_gaps():
    good = tables(GOOD)
    assert claim_verdict(good, "fve", "medical", "broad") == "supported"
    assert claim_verdict(good, "loss", "medical", "broad") == "not separable from FVE"
    assert claim_verdict(good, "dark_matter", "medical", "broad") == "supported"
    assert claim_verdict(tables(WEAK), "fve", "medical", "broad") == "not supported"
    # no matched-FVE rows (the sweeps' FVE ranges do not overlap): untested, said so
    no_overlap = tables([g for g in GOOD if g["basis"] == "l0_target"])
    assert claim_verdict(no_overlap, "loss", "medical", "broad") == (
        "supported at the same L0; no common FVE range")
    # no rows at all is never a success
    assert claim_verdict(tables(GOOD[2:]), "fve", "medical", "broad") == "not supported"
    with pytest.raises(KeyError, match="valid claims: fve, loss, dark_matter, did_fve_typical"
                       ".*home_excess_delta_ce; sensitivity checks: fve_typical"):
        claim("concepts")
    assert [c.sign for c in CLAIMS] == [1, 1, -1]


def test_replication_across_models():
    runs = [run("a (block 1)", GOOD), run("b (block 2)", WEAK)]
    table = verdict_table(runs, ["fve", "dark_matter"], "medical", "broad")
    assert list(table.columns) == ["a (block 1)", "b (block 2)", "same verdict on every model"]
    assert table.iloc[0].tolist() == ["supported", "not supported", "no"]
    assert table.iloc[1].tolist() == ["supported", "supported", "yes"]
    assert "replicates across" in replication_sentence("X", {"a": "supported",
                                                              "b": "supported"})
    assert "does not replicate" in replication_sentence("X", {"a": "supported",
                                                              "b": "not supported"})
    partly = replication_sentence("X", {"a": "supported",
                                        "b": "supported at the same L0; no common FVE range"})
    assert "holds at the same L0 on every model" in partly
    one = replication_sentence("X", {"a": "not supported"})
    assert "only model" in one and "replicates" not in one
    both = gap_table_by_model(runs, "medical", "broad", ["fve"])
    assert both.index.get_level_values("model").unique().tolist() == ["a (block 1)",
                                                                      "b (block 2)"]
    assert both.loc[("a (block 1)", "medical", 20.0), "fve"].endswith("*")
    assert not both.loc[("b (block 2)", "medical", 20.0), "fve"].endswith("*")


def test_concept_verdict_from_autointerp_scores():
    def scores(aurocs):
        return pd.DataFrame({"detection_auroc": aurocs, "n_failures": [0] * len(aurocs)})

    none = pd.DataFrame()
    better = {"medical": scores([0.9, 0.85, 0.95, 0.9]), "broad": scores([0.5, 0.55, 0.45, 0.5])}
    assert concept_verdict(better, none, "medical", "broad") == "supported"
    same = {"medical": scores([0.6, 0.4, 0.7, 0.3]), "broad": scores([0.6, 0.4, 0.7, 0.3])}
    assert concept_verdict(same, none, "medical", "broad") == "not supported"
    assert concept_verdict({"medical": better["medical"]}, none, "medical", "broad") == (
        "not supported")
    wrecked = pd.DataFrame([family_row("medical", 80.0, DCE_BAR_NATS * 8, 7.0, 9.0)])
    assert concept_verdict(better, wrecked, "medical", "broad") == NOT_JUDGED
    frame = verdicts_frame({CONCEPT_CLAIM: {"a": "supported", "b": "not supported"}})
    assert frame.loc[CONCEPT_CLAIM].tolist() == ["supported", "not supported", "no"]


def test_the_concept_interval_draws_the_runs_bootstrap_count(monkeypatch):
    """The concept claim's interval is drawn from the replicates it is handed (a run's
    ``eval.bootstrap``), by default that field's default, never a count of its own."""
    import sae_med.report.claims as claims
    from sae_med.config import EvalConfig

    asked = []

    def counting(scores, metric, n_boot, seed):
        asked.append((metric, n_boot, seed))
        return compare_scores(scores, metric, n_boot, seed)

    monkeypatch.setattr(claims, "compare_scores", counting)
    better = {"medical": pd.DataFrame({"detection_auroc": [0.9, 0.8], "n_failures": 0}),
              "broad": pd.DataFrame({"detection_auroc": [0.5, 0.4], "n_failures": 0})}
    concept_verdict(better, pd.DataFrame(), "medical", "broad", seed=3, n_boot=37)
    concept_verdict(better, pd.DataFrame(), "medical", "broad")
    assert asked == [("detection_auroc", 37, 3), ("detection_auroc", EvalConfig().bootstrap, 0)]


def test_the_concept_record_is_what_judges(monkeypatch):
    import sae_med.report.claims as claims

    better = {"medical": pd.DataFrame({"detection_auroc": [0.9, 0.85, 0.95], "n_failures": 0}),
              "broad": pd.DataFrame({"detection_auroc": [0.5, 0.55, 0.45], "n_failures": 0})}
    assert concept_verdict(better, pd.DataFrame(), "medical", "broad") == "supported"
    monkeypatch.setattr(claims, "CONCEPT", CONCEPT._replace(sign=-1))
    assert concept_verdict(better, pd.DataFrame(), "medical", "broad") == "not supported"


def step(train, frm, to, value, low, high, metric="delta_ce"):
    """One step row as results.json stores it (SAEs scored on medical text)."""
    return {"row_type": "step", "eval_corpus": "medical", "train_corpus": train,
            "metric": metric, "from_target": frm, "to_target": to, "value": value,
            "low": low, "high": high, "excludes_zero": low > 0 or high < 0}


def family_row(train, at, value, low, high):
    return {"row_type": "family", "eval_corpus": "medical", "train_corpus": train,
            "metric": "delta_ce", "basis": "l0_target", "l0_target": at, "fve": None,
            "value": value, "low": low, "high": high}


# medical ΔCE falls at both steps (stored out of order); broad's second step is unresolved
STEPS = pd.DataFrame([step("medical", 40.0, 80.0, -0.04, -0.06, -0.02),
                      step("medical", 20.0, 40.0, -0.08, -0.1, -0.06),
                      step("broad", 20.0, 40.0, -0.1, -0.2, -0.05),
                      step("broad", 40.0, 80.0, -0.02, -0.05, 0.01),
                      step("medical", 20.0, 40.0, 0.02, 0.01, 0.03, metric="fve")])


def test_step_intervals_trends_and_table():
    ivs = step_intervals(STEPS, "medical", "medical", "delta_ce")
    assert [iv.value for iv in ivs] == [-0.08, -0.04]  # in target order
    assert l0_trend(STEPS, "medical", "medical", "delta_ce") == "falls with L0"
    assert l0_trend(STEPS, "broad", "medical", "delta_ce") == "not resolved"
    assert l0_trend(STEPS, "medical", "medical", "fve") == "rises with L0"
    assert l0_trend(STEPS, "medical", "broad", "delta_ce") == "not resolved"  # no rows
    assert l0_trend(pd.DataFrame(), "medical", "medical", "delta_ce") == "not resolved"
    table = step_table(STEPS, ["delta_ce", "fve"])
    assert list(table.columns) == ["delta_ce", "fve"]
    assert table.loc[("medical", "medical", "20 → 40"), "delta_ce"] == \
        "-0.080 [-0.100, -0.060] *"
    assert not table.loc[("medical", "broad", "40 → 80"), "delta_ce"].endswith("*")
    assert step_table(pd.DataFrame(), ["delta_ce"]).empty


def test_dce_bar_sentence_states_value_bar_and_trend():
    families = pd.DataFrame([family_row("medical", 20.0, 1.4, 1.2, 1.6),
                             family_row("medical", 80.0, 0.3, 0.2, 0.4),
                             family_row("broad", 80.0, 2.0, 1.8, 2.2)])
    text = dce_bar_sentence(families, STEPS, "medical")
    assert "largest target L0 (80)" in text and "0.300 [0.200, 0.400]" in text
    assert "at or below it, with its whole 95% interval" in text
    assert text.endswith("“falls with L0”.")
    assert "above it, with its whole" in dce_bar_sentence(families, STEPS, "medical", bar=0.1)
    assert "reaches across it" in dce_bar_sentence(families, STEPS, "medical", bar=0.35)
    assert dce_bar_sentence(families.iloc[:0], STEPS, "medical").startswith("No ΔCE")


def test_verdicts_are_not_judged_when_the_domain_saes_fail_the_quality_bar():
    """The bar is judged on the domain SAEs' ΔCE on domain text at the largest target L0
    (what notebook 3 states), whatever the gaps say."""
    just_over = DCE_BAR_NATS * 1.01
    failing = [family_row("medical", 20.0, DCE_BAR_NATS / 2, 0.0, DCE_BAR_NATS),
               family_row("medical", 80.0, just_over, just_over - 0.1, just_over + 0.1)]
    passing = [family_row("medical", 80.0, DCE_BAR_NATS, 0.9, 1.1),
               family_row("broad", 80.0, DCE_BAR_NATS * 8, 7.0, 9.0)]  # broad SAE not gated
    assert bar_dce(pd.DataFrame(failing), "medical").l0_target == 80.0
    assert bar_dce(pd.DataFrame(), "medical") is None
    for key in ("fve", "loss", "dark_matter"):
        assert claim_verdict(tables(GOOD, failing), key, "medical", "broad") == NOT_JUDGED
    assert claim_verdict(tables(GOOD, passing), "fve", "medical", "broad") == "supported"
    table = verdict_table([run("a", GOOD, failing), run("b", GOOD, passing)], ["fve"],
                          "medical", "broad")
    assert table.iloc[0].tolist() == [NOT_JUDGED, "supported", "not judged"]
    mixed = replication_sentence("X", {"a": NOT_JUDGED, "b": "supported"})
    assert "not judged while a model's SAEs are below the quality bar" in mixed
    assert "not judged on any model" in replication_sentence("X", {"a": NOT_JUDGED,
                                                                   "b": NOT_JUDGED})
    unjudged = support_count({c.key: NOT_JUDGED for c in CLAIMS})
    assert unjudged == (0, 0) and str(unjudged) == f"no claim judged ({NOT_JUDGED})"
    sentence = dce_bar_sentence(pd.DataFrame(failing), STEPS, "medical")
    assert sentence.count("not judged") == 1
    assert "not judged" not in dce_bar_sentence(pd.DataFrame(passing), STEPS, "medical")


def test_dropped_sentence_names_the_worst_matched_fve_drop():
    rows = [gap("loss_recovered", 0.01, -0.01, 0.03, basis="fve", at=a) | {
                "n_boot": 2000, "dropped": d} for a, d in ((0.6, 40), (0.7, 0), (0.8, 300))]
    rows.append(gap("loss_recovered", 0.03, 0.01, 0.05) | {"n_boot": 2000, "dropped": 0})
    sentence = dropped_sentence(pd.DataFrame(rows), ["loss_recovered", "delta_ce"], "medical")
    assert "loss_recovered 300 of 2,000 (15.0%, at FVE 0.800)" in sentence
    assert "delta_ce" not in sentence  # no matched rows of it
    none = dropped_sentence(pd.DataFrame(rows[-1:]), ["loss_recovered"], "medical")
    assert none.startswith("No comparison at matched FVE")
    typical = [r | {"basis": "fve_typical", "fve": None, "fve_typical": r["fve"]}
               for r in rows[:3]]
    assert dropped_sentence(pd.DataFrame(rows + typical), ["loss_recovered"], "medical",
                            basis="fve_typical") == (
        "Bootstrap replicates left out at matched typical FVE (a drawn sweep did not reach "
        "that typical FVE), at the worst grid point: loss_recovered 300 of 2,000 (15.0%, "
        "at typical FVE 0.800).")


def test_rows_at_matched_typical_fve_judge_no_claim():
    """Gaps at matched typical FVE are a report beside the claims: rows there that would
    fail the loss and dark-matter claims change no verdict."""
    typical = [gap(m, 0.0, -0.1, 0.1, basis="fve", at=0.7) | {
                   "basis": "fve_typical", "fve": None, "fve_typical": 0.7}
               for m in ("loss_recovered", "dark_matter.r2_error_mean")]
    for key in ("fve", "loss", "dark_matter"):
        assert claim_verdict(tables(GOOD + typical), key, "medical", "broad") == \
            claim_verdict(tables(GOOD), key, "medical", "broad")


def test_a_sensitivity_check_is_never_counted_as_a_claim():
    """The massive-token FVE check is judged and labelled, but a run where only it and two
    claims hold has 2 of 3 claims supported, not 3 of 4."""
    check = claim("fve_typical")
    assert check in SENSITIVITY_CHECKS and check not in CLAIMS and not check.is_claim
    assert check.sensitivity_of == "fve" and check.text.startswith("Sensitivity check")
    assert all(c.is_claim for c in CLAIMS)
    verdicts = {"fve": "not supported", "fve_typical": "supported", "loss": "supported",
                "dark_matter": "supported"}
    assert support_count(verdicts) == (2, 3)
    assert str(support_count(verdicts)) == "2 of 3 claims supported"
    assert claim_verdict(tables(GOOD + [gap("fve_typical", 0.1, 0.05, 0.15)]),
                         "fve_typical", "medical", "broad") == "supported"  # still judged


def contrast(kind, metric, value, low, high, basis="l0_target", rank=0, first="medical",
             second="broad", reference=None):
    """One contrast row as results.json stores it."""
    return {"row_type": "contrast", "kind": kind, "first": first, "second": second,
            "reference": reference, "metric": metric, "basis": basis,
            "l0_target": 20.0 * (rank + 1) if basis == "l0_target" else None,
            "fve": 0.7 if basis == "fve" else None, "grid_point": rank if basis == "fve"
            else None, "value": value, "low": low, "high": high}


def with_contrasts(rows):
    return ComparisonTables(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(rows))


def test_did_verdicts_on_known_contrasts():
    """Declared before the run: every target L0 (and matched-FVE rank, for fidelity-dependent
    metrics) must exclude 0 on the claimed side; a pair stored the other way is negated."""
    keys = {c.metric: c.key for c in DID_CLAIMS}
    rows = [contrast("did", "fve_typical", 0.02, 0.01, 0.03),
            contrast("did", "fve_typical", 0.02, -0.01, 0.05, rank=1),
            # stored broad-versus-medical: medical's ΔCE home advantage is the larger (-)
            contrast("did", "delta_ce", 0.3, 0.1, 0.5, first="broad", second="medical"),
            contrast("did", "delta_ce", 0.2, 0.1, 0.3, basis="fve", first="broad",
                     second="medical"),
            contrast("did", "loss_recovered", 0.1, 0.05, 0.2),
            contrast("did", "loss_recovered", 0.0, -0.1, 0.1, basis="fve")]
    t = with_contrasts(rows)
    assert contrast_verdict(t, keys["fve_typical"], "medical", "broad") == "not supported"
    assert contrast_verdict(t, keys["delta_ce"], "medical", "broad") == "supported"
    assert contrast_verdict(t, keys["loss_recovered"], "medical", "broad") \
        == "not separable from FVE"
    assert contrast_verdict(t, keys["fve"], "medical", "broad") == "not supported"  # no rows
    assert contrast_verdict(tables(GOOD), keys["fve"], "medical", "broad") == "not supported"
    # a contrast claim is never judged from the domain gaps (it read the gap's metric)
    for c in (*DID_CLAIMS, *HOME_EXCESS_CLAIMS):
        with pytest.raises(ValueError, match="judged from contrasts"):
            claim_verdict(tables(GOOD), c.key, "medical", "broad")


def test_placebo_verdicts_need_the_runs_reference():
    key = next(c.key for c in HOME_EXCESS_CLAIMS if c.metric == "fve_typical")
    t = with_contrasts([contrast("home_excess", "fve_typical", 0.05, 0.02, 0.08,
                                 second="go", reference="broad"),
                        contrast("home_excess", "fve_typical", -0.01, -0.03, 0.01,
                                 second="foldoc", reference="broad")])
    assert placebo_verdict(t, key, "medical", "go", "broad") == "supported"
    assert placebo_verdict(t, key, "medical", "foldoc", "broad") == "not supported"
    with pytest.raises(ValueError, match="over \\['broad'\\]"):
        placebo_verdict(t, key, "medical", "go", "wordnet")
    assert all(claim(c.key).is_claim for c in (*DID_CLAIMS, *HOME_EXCESS_CLAIMS))


FROZEN = Path(__file__).with_name("frozen_rules.json")


def test_no_claim_rule_changes_without_a_new_version():
    """Every claim's rule (metric, sign, matched-FVE flag, quality bar, the code that judges
    it) is recorded per version; changing one means a new ``Claim.version`` and a new line
    in tests/report/frozen_rules.json, never an edit of a recorded one."""
    recorded = json.loads(FROZEN.read_text())
    for c in all_claims():
        got = rule_fingerprint(c)
        assert str(c.version) in recorded.get(c.key, {}), (
            f"claim {c.key!r} version {c.version} is not recorded: record it with "
            f"`{RECORD_COMMAND}`")
        assert recorded[c.key][str(c.version)] == got, (
            f"claim {c.key!r}'s rule changed but its version did not: bump its "
            f"Claim.version in sae_med/report/claims.py and record the new fingerprint "
            f"{got} with `{RECORD_COMMAND}`")
    assert CONCEPT in all_claims()


def test_the_fingerprint_sees_a_changed_rule_and_ignores_wording():
    c = CLAIMS[0]
    assert rule_fingerprint(c._replace(sign=-c.sign)) != rule_fingerprint(c)
    assert rule_fingerprint(c._replace(matched_fve=not c.matched_fve)) != rule_fingerprint(c)
    assert rule_fingerprint(c._replace(text="reworded")) == rule_fingerprint(c)
    assert rule_fingerprint(c._replace(version=2)) == rule_fingerprint(c)


def test_the_fingerprint_sees_changed_judging_code(monkeypatch):
    import sae_med.report.claims as claims

    did = next(d for d in all_claims() if d.key.startswith("did_"))
    before = {k: rule_fingerprint(k) for k in (CLAIMS[0], did)}

    def lenient(at_l0, at_fve=None, sign=1):  # a rule that ignores matched FVE
        return "supported" if all(sign * iv.value > 0 for iv in at_l0) else "not supported"

    monkeypatch.setattr(claims, "verdict", lenient)
    assert all(rule_fingerprint(k) != v for k, v in before.items())
    assert isinstance(did, Claim)


@pytest.mark.parametrize("c", COMPUTATIONS, ids=lambda c: c.key)
def test_no_frozen_computation_changes_without_a_new_version(c):
    """How the draws are made (sae_med.measure.bootstrap), how gaps, matched-FVE gaps and
    contrasts are computed from them (sae_med.measure.compare) and how the L0 trend is
    read are each frozen by a version of their own, so a change there cannot move a
    verdict unnoticed while every claim keeps its version."""
    got = computation_fingerprint(c)
    recorded = json.loads(FROZEN.read_text()).get(c.key, {})
    assert str(c.version) in recorded, (
        f"{c.key} version {c.version} is not recorded: record it with `{RECORD_COMMAND}`")
    assert recorded[str(c.version)] == got, (
        f"the code of {c.key} changed ({', '.join(c.functions)} in {c.module}, or "
        f"sae_med.measure.compare's MATCHED_AXES or LEVEL) but its version did not: bump "
        f"its version in sae_med/report/claims.py (now {c.version}; no claim's version "
        f"changes) and record the new fingerprint {got} with `{RECORD_COMMAND}`")


def test_the_computations_cover_draws_gaps_contrasts_and_the_trend():
    assert {"contrasts", "_paired_positions", "_contrast_rows", "matched", "interpolate",
            "fve_grid"} <= set(COMPARISON_COMPUTATION.functions)
    # the concept claim's nested resample calls these (its rule holds nested_mean_draws)
    assert {"group_counts", "doc_resample", "statistic_draws", "resample_indices",
            "_mean_draws", "_finite_values"} <= set(RESAMPLING_COMPUTATION.functions)
    assert {"trend_verdict", "comparison._steps"} <= set(L0_TREND_COMPUTATION.functions)


@pytest.mark.parametrize("c", COMPUTATIONS, ids=lambda c: c.key)
def test_a_computation_fingerprint_sees_each_function_and_ignores_the_version(
        c, monkeypatch):
    import importlib

    import sae_med.measure.compare as compare

    base = computation_fingerprint(c)
    assert computation_fingerprint(c._replace(version=99)) == base

    def other(*args, **kwargs):  # any other code
        return None

    for name in c.functions:
        *path, attr = name.split(".")
        owner = functools.reduce(getattr, path, importlib.import_module(c.module))
        monkeypatch.setattr(owner, attr, other)
        assert computation_fingerprint(c) != base, name
        monkeypatch.undo()
    monkeypatch.setattr(compare, "LEVEL", 0.9)
    assert computation_fingerprint(c) != base


def test_the_concept_fingerprint_sees_how_its_interval_is_drawn(monkeypatch):
    import sae_med.report.claims as claims

    base = rule_fingerprint(CONCEPT)

    def paired(scores, metric, n_boot, seed):  # another interval: latents as pairs
        return None

    monkeypatch.setattr(claims, "compare_scores", paired)
    assert rule_fingerprint(CONCEPT) != base


def test_recording_adds_new_versions_and_never_rewrites_a_recorded_one(tmp_path):
    path = tmp_path / FROZEN.name
    path.write_text(FROZEN.read_text())
    record_frozen(path)
    assert path.read_text() == FROZEN.read_text()  # everything current is recorded
    c = COMPARISON_COMPUTATION
    recorded = json.loads(FROZEN.read_text())
    recorded[c.key][str(c.version)] = "0" * 16  # the code changed, its version did not
    path.write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match="bump its version"):
        record_frozen(path)
    del recorded[c.key][str(c.version)], recorded[CONCEPT.key][str(CONCEPT.version)]
    path.write_text(json.dumps(recorded))
    record_frozen(path)  # new versions are added
    assert json.loads(path.read_text()) == json.loads(FROZEN.read_text())
