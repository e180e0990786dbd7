"""The random-weights control's tables and verdicts, on synthetic runs with planted home
advantages (known answers)."""

from __future__ import annotations

from synthetic_runs import TARGETS, synthetic_run

from sae_med.report.domain_report import load_side_run
from sae_med.report.random_weights import (
    RANDOM_WEIGHTS_COMMAND,
    control_rows,
    control_table,
    control_verdicts,
)

CORPORA = ["medical", "broad"]


def run(medical_home: float, broad_home: float):
    """A run whose medical SAE is ``medical_home`` better on medical text and whose broad
    SAE is ``broad_home`` better on broad text."""
    return synthetic_run(CORPORA, CORPORA, {("medical", "medical"): medical_home,
                                            ("broad", "broad"): broad_home})


def test_a_gap_that_vanishes_without_training_is_smaller_and_one_that_stays_is_not():
    trained = run(0.10, 0.10)
    rows = control_rows(run(0.02, 0.10), trained, "medical", "broad", ("fve_typical",))
    assert [(r.l0_target, r.own) for r in rows] == [(t, s) for t in TARGETS
                                                    for s in CORPORA]
    medical = [r for r in rows if r.own == "medical"]
    broad = [r for r in rows if r.own == "broad"]
    for r in medical:  # planted: 0.02 / 0.10
        assert abs(r.ratio.value - 0.2) < 0.05 and r.verdict == "smaller without training"
    for r in broad:  # planted: 0.10 / 0.10
        assert r.ratio.low < 1.0 < r.ratio.high and r.verdict == "as large without training"
    table = control_table(rows)
    assert list(table.verdict) == [r.verdict for r in rows]
    assert table["home advantage"][0] == "medical SAE − broad SAE on medical text"
    page = control_verdicts(rows, "medical", "unused")
    assert page["verdict_random_fve_typical"].startswith("smaller without training (ratio 0.")


def test_without_the_run_the_page_says_how_to_make_it(tmp_path):
    status = load_side_run(tmp_path / "results.json", "random-weights",
                           RANDOM_WEIGHTS_COMMAND)
    assert status.run is None and RANDOM_WEIGHTS_COMMAND in status.note
    page = control_verdicts(None, "medical", status.note)
    assert page == {"verdict_random_fve_typical": status.note,
                    "verdict_random_delta_ce": status.note}
