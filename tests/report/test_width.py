"""The width axis: configs/width.yaml declares the cells its docstring names; the crossover
rule and the slope test on hand-made gaps whose answers are known; and the tables, sentences
and figure on synthetic runs of every cell with planted gaps that close at a known width."""

from __future__ import annotations

import ast
import json
import math

import pytest
import synthetic_runs
from synthetic_runs import synthetic_doc, write_synthetic_results

from sae_med.config import load_config
from sae_med.layout import RESULTS_NAME
from sae_med.measure.bootstrap import Interval
from sae_med.measure.results import SCHEMA_VERSION
from sae_med.report.book import PROJECT_ROOT
from sae_med.report.matrix import NO_RESULTS, NOT_JUDGED, matrix_configs
from sae_med.report.rerun import run_notebook
from sae_med.report.width import (
    CONTRADICTED,
    CROSSOVER,
    GROWS,
    MATCHED,
    NO_CROSSOVER,
    NO_TREND,
    NOT_SHOWN,
    SHRINKS,
    SUPPORTED,
    TOO_FEW,
    UNDETERMINED,
    WIDTH_RULE,
    WIDTH_TARGET,
    Crossover,
    Trend,
    WidthSeries,
    capacity_verdict,
    crossover,
    crossover_sentence,
    family_table,
    read_widths,
    width_families,
    width_figure,
    width_gap_table,
    width_series,
    width_trend,
)

WIDTHS = WIDTH_RULE.widths
"""The declared widths (× d_model): the config's cells and the planted runs'."""
ARCHS = ("jumprelu", "matryoshka_batchtopk")


def around(value: float, half: float = 0.01) -> Interval:
    return Interval(value, value - half, value + half)


# ------------------------------------------------------------------------- the config

def test_width_config_declares_both_architectures_at_five_widths():
    cfg = load_config("configs/width.yaml")
    cells = {(c.sae.architecture, c.sae.width) for c in matrix_configs(cfg)}
    assert cells == {(a, w * 640) for a in ARCHS for w in WIDTHS}
    for c in matrix_configs(cfg):
        assert c.model.name == "embedded:gemma-3-270m" and c.sae.seeds == 3
        assert c.train_corpora == ("medical", "broad", "mixed_10")
        assert c.eval_corpora == ("medical", "broad")
        assert c.sae.l0_targets == ((20, 40, 80) if c.sae.width == 5120 else (40,))
        assert WIDTH_TARGET in c.sae.l0_targets
    # the width-8 cells are the default's and the matrix's own runs: reused, not retrained
    reps = cfg.replication_configs()
    default = load_config("configs/default.yaml")
    assert reps["default"].to_dict() == {k: v for k, v in default.to_dict().items()
                                         if k != "replications"}
    matrix = load_config("configs/matrix.yaml").replication_configs()
    assert reps["matrix_matryoshka"].to_dict() == matrix["matrix_matryoshka"].to_dict()


# ------------------------------------------------------------------------- the rules

CLOSING = {2: around(0.10), 4: around(0.06), 8: Interval(0.02, 0.005, 0.035),
           16: around(0.0, 0.02), 32: around(-0.01, 0.02)}
"""A gap that closes between 8x and 16x: the 8x interval's lower end is 0.005, the 16x's
-0.02, so log-width interpolation puts it at 2 ** (3 + 0.005 / 0.025) = 2 ** 3.2."""


def negated(gaps: dict[float, Interval]) -> dict[float, Interval]:
    return {w: Interval(-iv.value, -iv.high, -iv.low) for w, iv in gaps.items()}


def test_a_gap_that_closes_at_16x_gives_that_crossover_either_sign():
    for gaps, sign in ((CLOSING, 1), (negated(CLOSING), -1)):
        c = crossover(gaps, sign)
        assert (c.status, c.width, c.below) == (CROSSOVER, 16, 8)
        assert c.estimate == pytest.approx(2 ** 3.2)


def test_no_crossover_matched_throughout_and_a_gap_that_reopens():
    assert crossover({w: around(0.05) for w in WIDTHS}, 1).status == NO_CROSSOVER
    assert crossover({w: around(0.05) for w in WIDTHS}, -1).status == MATCHED  # reversed
    assert crossover({w: around(0.0) for w in WIDTHS}, 1) == (MATCHED, 2, None, None)
    # matched at 4x only: the rule asks for every larger width too
    reopens = {**{w: around(0.05) for w in WIDTHS}, 4: around(0.0)}
    assert crossover(reopens, 1).status == NO_CROSSOVER
    assert crossover({**CLOSING, 4: Interval(0.06, None, None)}, 1).status == UNDETERMINED


def test_crossover_sentence_says_no_crossover_up_to_32x():
    assert width_series([]) == []  # no runs: nothing to say
    flat = {float(w): around(0.05) for w in WIDTHS}
    s = WidthSeries("jumprelu", "broad", "fve_typical", flat, crossover(flat, 1),
                    width_trend(flat, 1))
    text = crossover_sentence([s])
    assert "no crossover up to 32× d_model" in text and "no trend" in text
    closing = WidthSeries("jumprelu", "mixed_10", "fve_typical", CLOSING,
                          crossover(CLOSING, 1), Trend(SHRINKS))
    assert ("from 16× d_model, not at 8× (the declared widths bracket the crossover in "
            "(8×, 16×]; the gap's interval reaches 0 near 9.2×") in crossover_sentence([closing])
    missing = WidthSeries("jumprelu", "broad", "delta_ce", {}, Crossover(NO_RESULTS),
                          Trend(NO_RESULTS))
    assert "sae-med experiment configs/width.yaml" in crossover_sentence([missing])


def test_slope_test_on_known_lines():
    line = {w: around(0.10 - 0.025 * math.log2(w / 2), 0.005) for w in WIDTHS}
    t = width_trend(line, 1)
    assert t.verdict == SHRINKS and t.slope.value == pytest.approx(-0.025)
    # equal weights: se(slope) = se / sqrt(sum (x - xbar)^2) = (0.005 / 1.96) / sqrt(10)
    assert t.slope.high - t.slope.value == pytest.approx(0.005 / math.sqrt(10), rel=1e-6)
    assert width_trend(negated(line), -1).verdict == SHRINKS  # ΔCE: smaller is the advantage
    assert width_trend(negated(line), 1).verdict == GROWS
    assert width_trend({w: around(0.05) for w in WIDTHS}, 1).verdict == NO_TREND
    assert width_trend({2: around(0.1), 32: around(0.0)}, 1).verdict == TOO_FEW


# ------------------------------------------------------------------ synthetic runs

MIXED_GAP = {2: 0.04, 4: 0.03, 8: 0.02, 16: 0.0, 32: 0.0}
"""JumpReLU's planted medical - mixed_10 gap on medical text: closes at 16x; its medical -
broad gap is 0.05 at every width. Matryoshka's medical SAE is no better than either."""


def planted(arch: str, multiple: int) -> dict[tuple[str, str], float]:
    if arch != "jumprelu":
        return {}
    return {("medical", "medical"): 0.05, ("mixed_10", "medical"): 0.05 - MIXED_GAP[multiple]}


@pytest.fixture
def width_cfg(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_runs, "TARGETS", (WIDTH_TARGET,))
    cfg = load_config("configs/width.yaml", [f"output_dir={tmp_path}"])
    for c in matrix_configs(cfg):
        doc = {"schema_version": SCHEMA_VERSION, "config": c.to_dict(),
               "rows": [{"d_model": 640}],
               **synthetic_doc(c.train_corpora, c.eval_corpora,
                               planted(c.sae.architecture, c.sae.width // 640))}
        c.run_path.mkdir(parents=True)
        (c.run_path / RESULTS_NAME).write_text(json.dumps(doc))
    return cfg


def by_key(series):
    return {(s.architecture, s.versus, s.metric): s for s in series}


def test_planted_runs_give_the_planted_crossovers_and_trends(width_cfg):
    series = by_key(width_series(read_widths(width_cfg)))
    assert len(series) == 2 * 2 * 2  # architectures x comparisons x metrics
    for metric in ("fve_typical", "delta_ce"):
        mixed = series[("jumprelu", "mixed_10", metric)]
        assert sorted(mixed.gaps) == list(WIDTHS)
        sign = 1 if metric == "fve_typical" else -1
        assert {w: round(sign * iv.value, 6) for w, iv in mixed.gaps.items()} == MIXED_GAP
        assert (mixed.crossover.status, mixed.crossover.width, mixed.crossover.below) == (
            CROSSOVER, 16, 8)
        assert mixed.trend.verdict == SHRINKS
        broad = series[("jumprelu", "broad", metric)]
        assert broad.crossover.status == NO_CROSSOVER and broad.trend.verdict == NO_TREND
        assert series[("matryoshka_batchtopk", "broad", metric)].crossover.status == MATCHED
    assert capacity_verdict(list(series.values())) == {
        "jumprelu": SUPPORTED, "matryoshka_batchtopk": NOT_SHOWN}


def test_tables_and_figure_read_every_width(width_cfg):
    runs = read_widths(width_cfg)
    families = width_families(runs)
    table = family_table(families)
    assert list(table.columns) == [f"{w}×" for w in WIDTHS]
    assert len(table) == 2 * 2 * 3  # architectures x metrics x training corpora
    gaps = width_gap_table(width_series(runs))
    assert [c for c in gaps.columns if c.endswith("×")] == [f"{w}×" for w in WIDTHS]
    fig = width_figure(families, "fve_typical", "typical-token FVE")
    assert len(fig.data) == 2 * 3 and list(fig.data[0].x) == list(WIDTHS)


def test_a_width_whose_results_lack_the_target_gap_is_undetermined(width_cfg):
    path = width_cfg.replication_configs()["width_jumprelu_4x"].run_path / RESULTS_NAME
    doc = json.loads(path.read_text())
    doc["gaps"] = [g for g in doc["gaps"] if g["l0_target"] != WIDTH_TARGET]
    path.write_text(json.dumps(doc))
    series = [s for s in width_series(read_widths(width_cfg)) if s.architecture == "jumprelu"]
    assert all(sorted(s.gaps) == list(WIDTHS) and s.gaps[4].low is None for s in series)
    assert {s.crossover.status for s in series} == {UNDETERMINED}
    # the slope test reads the four widths that have an interval
    assert {s.trend.verdict for s in series if s.versus == "mixed_10"} == {SHRINKS}


def test_a_missing_run_or_a_failed_bar_withholds_the_verdicts(width_cfg):
    reps = width_cfg.replication_configs()
    (reps["width_matryoshka_16x"].run_path / RESULTS_NAME).unlink()
    path = reps["width_jumprelu_4x"].run_path / RESULTS_NAME
    doc = json.loads(path.read_text())
    # the medical SAEs' ΔCE on medical text above the 1-nat bar at 4x
    doc.update(synthetic_doc(("medical", "broad", "mixed_10"), ("medical", "broad"),
                             {("medical", "medical"): -0.4}))
    path.write_text(json.dumps(doc))
    series = width_series(read_widths(width_cfg))
    assert {s.crossover.status for s in series if s.architecture == "jumprelu"} == {NOT_JUDGED}
    assert {s.trend.verdict for s in series if s.architecture != "jumprelu"} == {NO_RESULTS}
    assert capacity_verdict(series) == {"jumprelu": NOT_JUDGED,
                                        "matryoshka_batchtopk": NO_RESULTS}
    assert CONTRADICTED not in capacity_verdict(series).values()


# ------------------------------------------------------------------------- chapter 10

def glued(path) -> dict[str, str]:
    """The text each ``glue`` call of an executed notebook recorded, by name."""
    nb = json.loads(path.read_text())
    return {o["metadata"]["scrapbook"]["name"]: o["data"].get(
                "application/papermill.record/text/plain")
            for c in nb["cells"] for o in c.get("outputs", [])
            if "scrapbook" in o.get("metadata", {})}


def run_chapter(tmp_path, output_dir) -> dict[str, str]:
    """Chapter 10 on the runs under ``output_dir``: what it glued, strings read back."""
    out = run_notebook("10", str(PROJECT_ROOT / "configs" / "smoke.yaml"),
                       out=tmp_path / "10.ipynb",
                       extra={"side_overrides": [f"output_dir={output_dir}"]})
    return {k: ast.literal_eval(v) if v and v[0] in "'\"" else v
            for k, v in glued(out).items()}


def test_chapter_reads_both_experiments_runs(width_cfg, tmp_path, monkeypatch):
    """Every width run, and the matrix's runs but one: the glued crossover sentence is the
    package's; the matrix's verdict table is glued and its note names the missing run and
    the command."""
    matrix = load_config("configs/matrix.yaml", [f"output_dir={width_cfg.output_dir}"])
    # the matrix's own runs score its three targets (the width runs, only the width's one)
    monkeypatch.setattr(synthetic_runs, "TARGETS", tuple(map(float, matrix.sae.l0_targets)))
    for c in matrix_configs(matrix):
        if not (c.run_path / RESULTS_NAME).exists() and c.name != "matrix_topk":
            write_synthetic_results(c.run_path / RESULTS_NAME, c, {("medical", "medical"): 0.05})
    text = run_chapter(tmp_path, width_cfg.output_dir)
    assert text["width_crossover_sentence"] == crossover_sentence(
        width_series(read_widths(width_cfg)))
    assert "jumprelu, medical − mixed_10, typical-token FVE: the mixed_10 SAE matches the " \
           "medical one on medical text from 16× d_model, not at 8× (the declared widths " \
           "bracket the crossover in (8×, 16×]" in text[
               "width_crossover_sentence"]
    assert text["width_capacity_verdicts"] == "jumprelu: supported; matryoshka_batchtopk: " \
                                              "not shown"
    assert text["matrix_runs_note"].startswith("1 of the architecture matrix's 10 runs has no "
                                               "results yet (matrix_topk): `sae-med "
                                               "experiment configs/matrix.yaml` makes them")
    assert "relu" in text["matrix_verdict_table"] and "holds" in text["matrix_verdict_table"]


def test_chapter_without_any_run_names_both_commands(tmp_path):
    text = run_chapter(tmp_path, tmp_path / "nothing")
    for key, config in (("matrix_runs_note", "matrix"), ("width_runs_note", "width")):
        assert text[key].endswith(f"`sae-med experiment configs/{config}.yaml` produces them.")
    assert text["width_crossover_sentence"] == text["width_runs_note"]
    # the results page quotes the verdict table whether or not the matrix ran: here the
    # one-cell note of what to run, no verdicts
    assert text["matrix_verdict_table"].splitlines()[0].split() == ["note"]
    assert "has not been run" in text["matrix_verdict_table"]
