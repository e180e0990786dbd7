"""The width axis: configs/width.yaml declares the cells its docstring names; the crossover
rule and the slope test on hand-made gaps whose answers are known; and the tables, sentences
and figure on synthetic runs of every cell with planted gaps that close at a known width."""

from __future__ import annotations

import ast
import json
import math

import pytest
import synthetic_runs
import torch
from synthetic_runs import synthetic_doc, write_synthetic_results

from sae_med.config import load_config
from sae_med.layout import RESULTS_NAME
from sae_med.measure.bootstrap import Interval
from sae_med.measure.controls import Z95
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
    CrossoverInterval,
    Trend,
    WidthSeries,
    capacity_verdict,
    crossover,
    crossover_interval,
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
    assert crossover({w: around(0.0) for w in WIDTHS}, 1)[:4] == (MATCHED, 2, None, None)
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
    assert "; the gap itself reaches 0 at 16.0× [" in crossover_sentence([closing])
    missing = WidthSeries("jumprelu", "broad", "delta_ce", {}, Crossover(NO_RESULTS),
                          Trend(NO_RESULTS))
    assert "sae-med experiment configs/width.yaml" in crossover_sentence([missing])


# where the gap itself reaches 0: the point values' crossover and its bootstrap interval

CROSSES = {2: 0.3, 4: 0.2, 8: 0.1, 16: -0.1, 32: -0.2}
"""Point values whose linear interpolation on log2 width reaches 0 halfway from 8x to 16x:
at 2 ** 3.5."""


def naive_crossing(values: dict[float, float]) -> float:
    """The crossover of a curve by walking down from the largest width (× d_model)."""
    widths = sorted(values)
    if values[widths[-1]] > 0:
        return math.inf
    i = next((i for i in range(len(widths) - 1, -1, -1) if values[widths[i]] > 0), None)
    if i is None:
        return -math.inf
    (w0, w1), (a0, a1) = widths[i:i + 2], (values[widths[i]], values[widths[i + 1]])
    return 2 ** (math.log2(w0) + a0 / (a0 - a1) * (math.log2(w1) - math.log2(w0)))


def test_the_gap_reaches_0_at_the_interpolated_width_with_a_narrow_interval():
    for sign in (1, -1):
        iv = crossover_interval({w: around(sign * v, 1e-4) for w, v in CROSSES.items()}, sign)
        assert iv.value == pytest.approx(2 ** 3.5)
        assert iv.low < iv.value < iv.high and iv.high / iv.low < 1.01
    # a gap that crosses, reopens and crosses again: the last crossing counts
    again = {2: 0.1, 4: -0.1, 8: 0.1, 16: -0.1, 32: -0.2}
    assert crossover_interval({w: around(v, 0) for w, v in again.items()}, 1) == (
        CrossoverInterval(2 ** 3.5, 2 ** 3.5, 2 ** 3.5, 2, 32))


def test_the_interval_is_the_draws_2_5_and_97_5_percentiles():
    """One noisy width (se 0.1) before a fixed one: the crossing, 1 + a / (a + 1) on log2
    width, rises with the drawn advantage a, so its percentiles are those of a ~ N(0.5, 0.1)
    (to the Monte Carlo error of 2,000 draws, about 0.006 in a)."""
    iv = crossover_interval({2: around(0.5, Z95 * 0.1), 4: around(-1.0, 0)}, 1)
    for end, a in ((iv.low, 0.5 - Z95 * 0.1), (iv.value, 0.5), (iv.high, 0.5 + Z95 * 0.1)):
        assert end == pytest.approx(2 ** (1 + a / (a + 1)), rel=0.005)


def test_the_point_crossing_matches_a_walk_down_the_widths():
    rng = torch.Generator().manual_seed(0)
    for _ in range(200):
        values = dict(zip(WIDTHS, (torch.randn(5, generator=rng) * 0.1 - 0.03).tolist(),
                          strict=True))
        got = crossover_interval({w: around(v, 0) for w, v in values.items()}, 1).value
        assert got == pytest.approx(naive_crossing(values)), values


def test_censored_crossings_read_beyond_or_at_or_below_the_ends():
    beyond = crossover({w: around(0.05) for w in WIDTHS}, 1)
    assert beyond.status == NO_CROSSOVER
    assert beyond.interval == CrossoverInterval(math.inf, math.inf, math.inf, 2, 32)
    assert beyond.interval.text() == "> 32× [> 32×, > 32×]"
    below = crossover_interval({w: around(-0.05) for w in WIDTHS}, 1)
    assert (below.value, below.text()) == (-math.inf, "≤ 2× [≤ 2×, ≤ 2×]")
    # still positive at 32x, but only just: some draws cross, the upper end stays beyond
    late = crossover_interval({**{w: around(0.05) for w in WIDTHS}, 32: around(0.005)}, 1)
    assert late.value == math.inf and 16 < late.low < 32 and late.high == math.inf
    assert late.text().startswith("> 32× [") and late.text().endswith(", > 32×]")


def test_wider_gaps_widen_the_interval_and_the_draws_are_reproducible():
    narrow, wide = (crossover_interval({w: around(v, h) for w, v in CROSSES.items()}, 1)
                    for h in (0.02, 0.1))
    assert narrow.value == wide.value == pytest.approx(2 ** 3.5)
    assert wide.low < narrow.low < narrow.value < narrow.high < wide.high
    gaps = {w: around(v, 0.1) for w, v in CROSSES.items()}
    assert crossover_interval(gaps, 1) == crossover_interval(gaps, 1) == wide
    other = crossover_interval(gaps, 1, WIDTH_RULE._replace(seed=1))
    assert other != wide and other.value == wide.value
    fewer = crossover_interval(gaps, 1, WIDTH_RULE._replace(draws=40))
    assert fewer[1:3] != wide[1:3]


def test_a_width_without_an_interval_leaves_the_interval_undetermined():
    c = crossover({**CLOSING, 4: Interval(0.06, None, None)}, 1)
    assert c.status == UNDETERMINED
    assert c.interval == CrossoverInterval(None, None, None, 2, 32)
    assert c.interval.text() == "undetermined (a width's gap has no interval)"
    assert crossover({}, 1).interval.value is None


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
        assert mixed.crossover.interval.value == pytest.approx(16)  # the point reaches 0 there
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
    assert gaps["gap reaches 0 (95%)"].str.contains(r"\[.*\]").all()
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
