"""The random-weights control's tables and verdicts, on synthetic runs with planted home
advantages (known answers)."""

from __future__ import annotations

from pathlib import Path

from synthetic_runs import TARGETS, synthetic_run

from sae_med.measure.controls import NOT_SMALLER, SMALLER
from sae_med.report.domain_report import load_side_run
from sae_med.report.random_weights import (
    RANDOM_WEIGHTS_COMMAND,
    RANDOM_WEIGHTS_CONFIG,
    control_rows,
    control_table,
    control_verdicts,
    replication_controls,
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
        assert abs(r.ratio.value - 0.2) < 0.05 and r.verdict == SMALLER
    for r in broad:  # planted: 0.10 / 0.10
        assert r.ratio.low < 1.0 < r.ratio.high and r.verdict == NOT_SMALLER
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


def with_loss(tables, ce_clean: float, ce_zero: float):
    """``tables`` with the family means of ``ce_clean`` and ``ce_zero`` (the model's own
    loss, equal for every SAE) on each training corpus's own text at every target."""
    import pandas as pd

    rows = [{"row_type": "family", "eval_corpus": c, "train_corpus": c, "metric": m,
             "basis": "l0_target", "l0_target": t, "value": v, "low": v, "high": v}
            for c in CORPORA for t in TARGETS
            for m, v in (("ce_clean", ce_clean), ("ce_zero", ce_zero))]
    return tables._replace(families=pd.concat([tables.families, pd.DataFrame(rows)],
                                              ignore_index=True))


def test_loss_rows_of_a_model_at_the_uniform_guess_are_no_test_and_a_trained_ones_are_judged():
    """Known answers: a random model at the uniform guess (12.48 nats over 262,144 tokens,
    zero ablation no worse) gets "not a test" on ΔCE with its numbers, whatever the ratio;
    one that predicts (clean 3.0, zero ablation 9.0) is judged as before. FVE rows never
    pass the gate."""
    import math

    trained, vocab = run(0.10, 0.10), 262_144
    uniform = math.log(vocab)
    metrics = ("fve_typical", "delta_ce")
    flat = control_rows(with_loss(run(0.02, 0.10), uniform, uniform), trained, "medical",
                        "broad", metrics, vocab_size=vocab)
    for r in flat:
        if r.metric == "delta_ce":
            assert r.verdict.startswith("not a test: the model has no loss to lose")
            assert f"clean CE {uniform:.2f}" in r.verdict and "262,144" in r.verdict
        else:
            assert r.verdict in (SMALLER, NOT_SMALLER)  # judged: the gate is loss-only
    page = control_verdicts(flat, "medical", "unused")
    assert page["verdict_random_delta_ce"].startswith("not a test")
    predicting = control_rows(with_loss(run(0.02, 0.10), 3.0, 9.0), trained, "medical",
                              "broad", metrics, vocab_size=vocab)
    assert [r.verdict for r in predicting if r.metric == "delta_ce"] == [
        (SMALLER if r.own == "medical" else NOT_SMALLER)
        for r in predicting if r.metric == "delta_ce"]
    unknown = control_rows(with_loss(run(0.02, 0.10), 3.0, 9.0), trained, "medical",
                           "broad", metrics)
    assert all(r.verdict.startswith("not judged") for r in unknown if r.metric == "delta_ce")


def test_each_replication_is_set_against_the_trained_run_of_its_own_model(tmp_path):
    """The random-weights config's SmolLM2 replication: absent, a note with the command;
    written, its rows against the trained SmolLM2 run (not Gemma's), and absent again when
    no trained run of that model is given."""
    from synthetic_runs import write_synthetic_results

    from sae_med.config import load_config
    from sae_med.report.claims import ModelRun, model_label

    cfg_path = tmp_path / "random_weights.yaml"
    cfg_path.write_text(f"base: {Path.cwd() / RANDOM_WEIGHTS_CONFIG}\n"
                        f"output_dir: {tmp_path}\n")
    rep = next(iter(load_config(cfg_path).replication_configs().values()))
    gemma = ModelRun("gemma-3-270m (block 13)", None, run(0.10, 0.10))
    smol = ModelRun(model_label(rep), rep, run(0.10, 0.10))
    (absent,) = replication_controls([gemma, smol], "medical", "broad", str(cfg_path))
    assert absent.rows is None and RANDOM_WEIGHTS_COMMAND in absent.note
    assert absent.label == "smollm2-135m-instruct (block 22)"
    write_synthetic_results(rep.run_path / "results.json", rep,
                            {("medical", "medical"): 0.02, ("broad", "broad"): 0.10})
    (got,) = replication_controls([gemma, smol], "medical", "broad", str(cfg_path))
    medical = [r for r in got.rows if r.own == "medical" and r.metric == "fve_typical"]
    assert "read from" in got.note and medical and all(r.verdict == SMALLER for r in medical)
    (unmatched,) = replication_controls([gemma], "medical", "broad", str(cfg_path))
    assert unmatched.rows is None and "No trained run of smollm2" in unmatched.note
