"""The architecture matrix's tables and verdicts on synthetic runs with planted gaps (one
results file per cell run of configs/matrix.yaml), and its rule on hand-made intervals."""

from __future__ import annotations

import json

import pytest
import synthetic_runs
from synthetic_runs import benchmark_script, write_synthetic_results

from sae_med.config import load_config
from sae_med.layout import RESULTS_NAME
from sae_med.measure.bootstrap import Interval
from sae_med.report.matrix import (
    FAILS,
    HOLDS,
    NO_RESULTS,
    NOT_JUDGED,
    REVERSES,
    architecture_verdict,
    cell_verdict,
    gap_table,
    matrix_cells,
    matrix_configs,
    read_matrix,
    verdict_table,
)

GEMMA, SMOL = "embedded:gemma-3-270m", "embedded:smollm2-135m-instruct"
MED = ("medical", "medical")
PLANTED = {
    # medical SAE better on medical text than both others, on both models
    ("relu", GEMMA): {MED: 0.05}, ("relu", SMOL): {MED: 0.05},
    # worse on both models
    ("topk", GEMMA): {MED: -0.05}, ("topk", SMOL): {MED: -0.05},
    # better than broad, as good as mixed_10 (which has seen medicine)
    ("batchtopk", GEMMA): {MED: 0.05, ("mixed_10", "medical"): 0.05},
    ("batchtopk", SMOL): {MED: 0.05, ("mixed_10", "medical"): 0.05},
    # the models disagree
    ("matryoshka_batchtopk", GEMMA): {MED: 0.05},
    ("matryoshka_batchtopk", SMOL): {MED: -0.05},
    # holds on Gemma; on SmolLM2 the medical SAEs' ΔCE (1.5 - quality) breaks the 1-nat bar
    ("jumprelu", GEMMA): {MED: 0.05}, ("jumprelu", SMOL): {MED: -0.6},
}


@pytest.fixture
def matrix_cfg(tmp_path, monkeypatch):
    # the synthetic runs score the matrix's own targets: the rule judges each declared one
    monkeypatch.setattr(synthetic_runs, "TARGETS", (20.0, 40.0, 80.0))
    cfg = load_config("configs/matrix.yaml", [f"output_dir={tmp_path}"])
    for c in matrix_configs(cfg):
        write_synthetic_results(c.run_path / RESULTS_NAME, c,
                                PLANTED[(c.sae.architecture, c.model.name)])
    return cfg


def test_matrix_declares_five_architectures_on_both_models():
    cfg = load_config("configs/matrix.yaml")
    cells = {(c.sae.architecture, c.model.name) for c in matrix_configs(cfg)}
    assert cells == set(PLANTED)
    for c in matrix_configs(cfg):
        assert c.train_corpora == ("medical", "broad", "mixed_10")
        assert c.eval_corpora == ("medical", "broad")
        assert c.sae.l0_targets == (20, 40, 80) and c.sae.seeds == 3
    # the JumpReLU cells are the default's own runs, so a finished default is reused
    default = load_config("configs/default.yaml")
    reps = cfg.replication_configs()
    assert reps["default"].to_dict() == {k: v for k, v in default.to_dict().items()
                                         if k != "replications"}
    assert reps["smollm2"].to_dict() == default.replication_configs()["smollm2"].to_dict()


def test_planted_gaps_give_each_architecture_its_verdict(matrix_cfg):
    cells = matrix_cells(read_matrix(matrix_cfg))
    verdicts = verdict_table(cells).set_index(["architecture", "gap"])["all three"]
    assert verdicts.to_dict() == {
        ("relu", "medical − broad"): HOLDS, ("relu", "medical − mixed_10"): HOLDS,
        ("jumprelu", "medical − broad"): NOT_JUDGED,
        ("jumprelu", "medical − mixed_10"): NOT_JUDGED,
        ("topk", "medical − broad"): REVERSES, ("topk", "medical − mixed_10"): REVERSES,
        ("batchtopk", "medical − broad"): HOLDS, ("batchtopk", "medical − mixed_10"): FAILS,
        ("matryoshka_batchtopk", "medical − broad"): FAILS,
        ("matryoshka_batchtopk", "medical − mixed_10"): FAILS}
    # per model: matryoshka holds on Gemma and reverses on SmolLM2, every metric
    mat = {(c.model, c.metric): c.verdict for c in cells
           if c.architecture == "matryoshka_batchtopk" and c.versus == "broad"}
    assert {v for (m, _), v in mat.items() if m.startswith("gemma")} == {HOLDS}
    assert {v for (m, _), v in mat.items() if m.startswith("smollm2")} == {REVERSES}
    # the gaps themselves: +0.05 typical FVE, -0.05 ΔCE and R²(e) at every target
    relu = {(c.metric, t): iv.value for c in cells if c.architecture == "relu"
            and c.versus == "broad" and c.model.startswith("gemma") for t, iv in c.gaps.items()}
    assert relu == pytest.approx({(m, t): v for m, v in (
        ("fve_typical", 0.05), ("delta_ce", -0.05), ("dark_matter.r2_error_mean", -0.05))
        for t in (20.0, 40.0, 80.0)})


def test_a_declared_target_without_a_gap_fails_the_cell(matrix_cfg):
    # relu holds on both models at every target; drop target 40's gaps from Gemma's run
    path = matrix_cfg.run_path / RESULTS_NAME
    doc = json.loads(path.read_text())
    doc["gaps"] = [g for g in doc["gaps"] if g["l0_target"] != 40.0]
    path.write_text(json.dumps(doc))
    cells = [c for c in matrix_cells(read_matrix(matrix_cfg))
             if c.architecture == "relu" and c.model.startswith("gemma")]
    assert cells and all(c.verdict == FAILS for c in cells)
    assert all(sorted(c.gaps) == [20.0, 40.0, 80.0] and c.gaps[40.0].low is None
               for c in cells)
    verdicts = verdict_table(matrix_cells(read_matrix(matrix_cfg))).set_index(
        ["architecture", "gap"])["all three"]
    assert verdicts[("relu", "medical − broad")] == FAILS


def test_gap_table_prints_every_cell_and_a_missing_run(matrix_cfg, capsys):
    (matrix_cfg.replication_configs()["matrix_topk_smollm2"].run_path / RESULTS_NAME).unlink()
    cells = matrix_cells(read_matrix(matrix_cfg))
    table = gap_table(cells)
    assert len(table) == 10 * 2 * 3  # runs x comparisons x metrics
    assert list(table.columns) == ["architecture", "model", "gap", "metric", "L0 20",
                                   "L0 40", "L0 80", "verdict"]
    row = table[(table.architecture == "relu") & (table.metric == "ΔCE")].iloc[0]
    assert row["L0 20"].startswith("-0.050 [") and row.verdict == HOLDS
    topk = verdict_table(cells).set_index(["architecture", "gap"])
    assert set(topk.loc["topk"]["all three"]) == {NO_RESULTS}
    # benchmarks/matrix_table.py --present (what RESULTS.md quotes while the matrix is
    # made): the gap table without the missing run's cells, the verdicts all kept
    script = benchmark_script("matrix_table")
    overrides = [f"output_dir={matrix_cfg.output_dir}"]
    script.main("configs/matrix.yaml", *overrides)
    everything = capsys.readouterr().out
    script.main("configs/matrix.yaml", "--present", *overrides)
    present = capsys.readouterr().out
    gaps = [t.split("\n\n")[-2] for t in (everything, present)]
    assert [g.count("smollm2-135m-instruct") for g in gaps] == [30, 24]  # 6 rows a run
    assert "runs without results yet: matrix_topk_smollm2" in present
    assert present.split("\n\n")[-1] == everything.split("\n\n")[-1]


def test_the_rule_on_hand_made_intervals():
    up, down, zero = Interval(0.1, 0.05, 0.15), Interval(-0.1, -0.15, -0.05), Interval(
        0.0, -0.05, 0.05)
    assert cell_verdict([up, up, up], 1) == HOLDS
    assert cell_verdict([down, down], -1) == HOLDS  # smaller is the paper's side
    assert cell_verdict([down, down], 1) == REVERSES
    assert cell_verdict([up, zero, up], 1) == FAILS
    assert cell_verdict([up, down], 1) == FAILS
    assert cell_verdict([up, Interval(0.1, None, None)], 1) == FAILS
    assert cell_verdict([], 1) == FAILS
    assert architecture_verdict([HOLDS, HOLDS]) == HOLDS
    assert architecture_verdict([REVERSES, REVERSES]) == REVERSES
    assert architecture_verdict([HOLDS, REVERSES]) == FAILS
    assert architecture_verdict([HOLDS, NOT_JUDGED]) == NOT_JUDGED
    assert architecture_verdict([NOT_JUDGED, NO_RESULTS]) == NO_RESULTS
    assert architecture_verdict([]) == NO_RESULTS


def test_verdict_table_without_a_run_is_the_note_saying_what_to_run():
    """The results page always quotes the table: a one-cell note while the matrix is
    absent."""
    table = verdict_table([], note="run sae-med experiment configs/matrix.yaml")
    assert list(table.columns) == ["note"]
    assert table["note"].tolist() == ["run sae-med experiment configs/matrix.yaml"]
