"""Known answers for sae_med.measure.compare: paired gaps and steps, seed means, matched-FVE
interpolation, verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_med.measure.bootstrap import Draws, Interval, bootstrap_ci, doc_resample, statistic_draws
from sae_med.measure.compare import (
    SaeDraws,
    compare,
    contrasts,
    interpolate,
    matched,
    seed_draws,
    seed_mean,
    trend_verdict,
    verdict,
)
from sae_med.measure.metrics import DocSums, metrics_from_doc_sums

N_DOCS, D, N_BOOT = 40, 6, 200
TARGETS = (10.0, 20.0, 40.0)


def doc_sums(quality: float, seed: int) -> DocSums:
    """Per-document sums of a fake SAE whose error is ``quality`` times the signal noise
    (smaller: better), document-level variation from ``seed`` shared by every SAE."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(5, 30, (N_DOCS,), generator=g).double()
    x = torch.randn(N_DOCS, D, generator=g, dtype=torch.float64)
    x_sq = n * D * (1 + torch.rand(N_DOCS, generator=g, dtype=torch.float64))
    sq_err = quality * x_sq * (0.5 + torch.rand(N_DOCS, generator=torch.Generator()
                                                .manual_seed(99), dtype=torch.float64))
    return DocSums(torch.arange(N_DOCS), n, n * 3, sq_err, x, x_sq, torch.zeros_like(x),
                   x_sq - sq_err, x_sq - sq_err)


def fve_draws(quality: float, resample) -> dict[str, Draws]:
    return statistic_draws(doc_sums(quality, 0), lambda s: {"fve": metrics_from_doc_sums(s).fve},
                           resample.counts)


def family(corpus: str, qualities, resample, target: float = 20.0) -> list[SaeDraws]:
    return [SaeDraws(corpus, target, r, fve_draws(q, resample)) for r, q in enumerate(qualities)]


@pytest.fixture
def resample():
    return doc_resample([torch.arange(N_DOCS)], N_BOOT, seed=5)


def test_doc_resample_draws_are_bootstrap_cis_and_subsets_stay_paired(resample):
    s = doc_sums(0.3, 0)
    d = statistic_draws(s, lambda x: {"fve": metrics_from_doc_sums(x).fve}, resample.counts)
    ref = bootstrap_ci(s, lambda x: metrics_from_doc_sums(x).fve, N_BOOT, seed=5)
    assert np.nanquantile(d["fve"].reps, 0.025) == pytest.approx(ref.low, rel=1e-9)
    sub = torch.tensor([3, 7, 11])
    assert torch.equal(resample.columns(sub), resample.counts[:, sub])
    with pytest.raises(ValueError, match="universe"):
        resample.columns(torch.tensor([N_DOCS + 1]))


def test_identical_families_give_a_gap_interval_containing_zero(resample):
    q = (0.30, 0.33, 0.36)  # seed-to-seed spread, the same in both families
    out = compare(family("medical", q, resample) + family("broad", q, resample),
                  "medical", ("medical", "broad"), seed=1)
    [gap] = [g for g in out.gaps if g.metric == "fve"]
    assert gap.interval.value == pytest.approx(0.0, abs=1e-12)
    assert gap.interval.low < 0 < gap.interval.high and not gap.interval.excludes_zero
    assert (gap.train_corpus, gap.versus, gap.basis, gap.at) == ("medical", "broad",
                                                                 "l0_target", 20.0)


def test_uniformly_better_family_gives_a_gap_excluding_zero(resample):
    out = compare(family("medical", (0.20, 0.21, 0.22), resample)
                  + family("broad", (0.30, 0.31, 0.32), resample),
                  "medical", ("medical", "broad"), seed=1)
    [gap] = [g for g in out.gaps if g.metric == "fve"]
    assert gap.interval.value == pytest.approx(0.1, abs=0.02)
    assert gap.interval.excludes_zero and gap.interval.low > 0
    fam = {f.train_corpus: f for f in out.families if f.metric == "fve"}
    assert len(fam["medical"].seed_values) == 3
    assert fam["medical"].interval.value == pytest.approx(np.mean(fam["medical"].seed_values))


def test_seed_variance_widens_the_family_interval(resample):
    tight = seed_mean([fve_draws(q, resample)["fve"] for q in (0.3, 0.3, 0.3)],
                      seed_draws(3, N_BOOT, 0))
    spread = seed_mean([fve_draws(q, resample)["fve"] for q in (0.1, 0.3, 0.5)],
                       seed_draws(3, N_BOOT, 0))
    width = [np.nanquantile(d.reps, 0.975) - np.nanquantile(d.reps, 0.025)
             for d in (tight, spread)]
    assert width[1] > 3 * width[0]


def test_interpolation_is_exact_for_a_linear_metric():
    fve = np.array([0.5, 0.8, 0.6])  # unsorted sweep
    metric = 2.0 - 3.0 * fve
    grid = np.array([0.55, 0.7, 0.79, 0.9])
    out = interpolate(fve, metric, grid)
    assert out[:3] == pytest.approx(2.0 - 3.0 * grid[:3], abs=1e-12)
    assert np.isnan(out[3])  # outside the sweep: no extrapolation


def test_matched_fve_is_exact_inside_every_replicate():
    rng = np.random.default_rng(0)
    fve = [Draws(p, p + 0.01 * rng.standard_normal(50)) for p in (0.5, 0.6, 0.8)]
    metric = [Draws(1 - 2 * d.point, 1 - 2 * d.reps) for d in fve]
    grid = np.array([0.6, 0.65])
    for g, d in zip(grid, matched(fve, metric, grid), strict=True):
        assert d.point == pytest.approx(1 - 2 * g)
        ok = ~np.isnan(d.reps)
        assert ok.mean() > 0.8 and d.reps[ok] == pytest.approx(1 - 2 * g)


def test_matched_fve_gap_of_families_on_one_line_is_zero():
    """Two families on the same metric-vs-FVE line, at different FVEs per target: the gap
    at the same L0 is large, the gap at matched FVE is 0."""
    def sae(corpus, target, r, fve):
        return SaeDraws(corpus, target, r, {"fve": Draws(fve, np.full(20, fve)),
                                            "delta_ce": Draws(1 - fve, np.full(20, 1 - fve))})
    saes = [sae("medical", t, r, 0.6 + 0.1 * i + 0.01 * r) for i, t in enumerate(TARGETS)
            for r in range(2)]
    saes += [sae("broad", t, r, 0.5 + 0.1 * i + 0.01 * r) for i, t in enumerate(TARGETS)
             for r in range(2)]
    out = compare(saes, "medical", ("medical", "broad"), seed=0)
    at_l0 = [g for g in out.gaps if g.metric == "delta_ce" and g.basis == "l0_target"]
    at_fve = [g for g in out.gaps if g.metric == "delta_ce" and g.basis == "fve"]
    assert len(at_l0) == 3 and all(g.interval.value == pytest.approx(-0.1) for g in at_l0)
    assert len(at_fve) == 3
    for g in at_fve:
        assert 0.61 < g.at < 0.71  # inside both families' overlap [0.61, 0.71]
        assert g.interval.value == pytest.approx(0.0, abs=1e-12)
        assert g.interval.low == pytest.approx(0.0, abs=1e-12)


def test_matched_fve_counts_the_replicates_it_drops():
    """One seed per family, replicate FVE sweeps jittered so some do not reach a grid FVE:
    each matched gap's ``dropped`` is the number of replicates where either family's sweep
    misses that FVE (counted here directly), and the row says so."""
    rng = np.random.default_rng(0)
    sweeps = {"medical": (0.60, 0.70, 0.80), "broad": (0.55, 0.66, 0.77)}
    reps = {c: np.array(f) + 0.03 * rng.standard_normal((N_BOOT, 3)) for c, f in sweeps.items()}
    saes = [SaeDraws(c, t, 0, {"fve": Draws(f[i], reps[c][:, i]),
                               "delta_ce": Draws(1 - f[i], 1 - reps[c][:, i])})
            for c, f in sweeps.items() for i, t in enumerate(TARGETS)]
    out = compare(saes, "medical", ("medical", "broad"), seed=0)
    at_fve = [g for g in out.gaps if g.metric == "delta_ce" and g.basis == "fve"]
    assert len(at_fve) == 3
    for g in at_fve:
        misses = [(g.at < r.min(1)) | (g.at > r.max(1)) for r in reps.values()]
        assert g.dropped == int((misses[0] | misses[1]).sum())
        assert g.n_boot == N_BOOT and g.to_dict()["dropped"] == g.dropped
    assert sum(g.dropped for g in at_fve) > 0  # the jitter does push some out
    assert all(g.dropped == 0 for g in out.gaps if g.basis == "l0_target")


def two_axis_saes(jitter: float = 0.0, seed: int = 0) -> tuple[list[SaeDraws], dict]:
    """One seed per family; along the sweep (targets 10, 20, 40) the medical SAE has the
    lower pooled FVE and the higher typical FVE (a massive token it reconstructs badly),
    with ΔCE linear in each FVE: pooled FVE (0.60, 0.70, 0.80) and typical (0.70, 0.80,
    0.90) for medical, (0.65, 0.75, 0.85) and (0.60, 0.70, 0.80) for broad; ΔCE (0.50,
    0.40, 0.30) and (0.55, 0.45, 0.35). Each replicate's FVEs are the points plus
    ``jitter`` noise (some then miss a grid point); returns the SAEs and each family's
    replicate sweeps ``{(corpus, metric): (n_boot, targets)}``."""
    rng = np.random.default_rng(seed)
    points = {"medical": {"fve": (0.60, 0.70, 0.80), "fve_typical": (0.70, 0.80, 0.90),
                          "delta_ce": (0.50, 0.40, 0.30)},
              "broad": {"fve": (0.65, 0.75, 0.85), "fve_typical": (0.60, 0.70, 0.80),
                        "delta_ce": (0.55, 0.45, 0.35)}}
    reps = {(c, m): np.array(v) + (jitter if m != "delta_ce" else 0.0)
            * rng.standard_normal((N_BOOT, 3)) for c, ms in points.items()
            for m, v in ms.items()}
    saes = [SaeDraws(c, t, 0, {m: Draws(v[i], reps[(c, m)][:, i]) for m, v in ms.items()})
            for c, ms in points.items() for i, t in enumerate(TARGETS)]
    return saes, reps


def test_matched_typical_fve_is_a_second_axis_with_its_own_grid_and_answer():
    """Known answers on both axes. Pooled grid: the common range [0.65, 0.80] in three
    bins; medical ΔCE 0.5 − (f − 0.6), broad 0.55 − (f − 0.65): a gap of −0.10 at every
    point. Typical grid: [0.70, 0.80]; medical ΔCE 0.5 − (t − 0.7), broad 0.55 − (t −
    0.6): a gap of +0.05, the other sign; the pooled FVE there is t − 0.1 against t + 0.05
    (a gap of −0.15: what the massive token carries). No jitter, nothing dropped."""
    saes, _ = two_axis_saes()
    out = compare(saes, "medical", ("medical", "broad"), seed=0)

    def gaps(metric, basis):
        return sorted((g for g in out.gaps if g.metric == metric and g.basis == basis),
                      key=lambda g: g.at)

    pooled, typical = gaps("delta_ce", "fve"), gaps("delta_ce", "fve_typical")
    assert [g.at for g in pooled] == pytest.approx([0.675, 0.725, 0.775])
    assert [g.at for g in typical] == pytest.approx([0.70 + 0.1 * (k + 0.5) / 3
                                                     for k in range(3)], abs=1e-6)
    assert all(g.interval.value == pytest.approx(-0.10) for g in pooled)
    assert all(g.interval.value == pytest.approx(0.05) for g in typical)
    assert all(g.interval.value == pytest.approx(-0.15)
               for g in gaps("fve", "fve_typical"))
    assert not gaps("fve", "fve") and not gaps("fve_typical", "fve")  # not its own axis
    assert all(g.dropped == 0 and g.n_boot == N_BOOT for g in out.gaps)
    row = typical[0].to_dict()
    assert (row["basis"], row["fve"], row["l0_target"]) == ("fve_typical", None, None)
    assert row["fve_typical"] == typical[0].at


def test_matched_typical_fve_counts_its_own_drops():
    """With jittered replicate sweeps, each typical-FVE gap's ``dropped`` is the number of
    replicates where either family's *typical* sweep misses the grid point (counted here
    directly), not its pooled sweep; the table and the sentence state the share."""
    import pandas as pd

    from sae_med.report.claims import dropped_sentence
    from sae_med.report.notebook import DROPPED_COLUMN, gap_table

    saes, reps = two_axis_saes(jitter=0.03)
    out = compare(saes, "medical", ("medical", "broad"), seed=0)
    for basis in ("fve", "fve_typical"):
        rows = [g for g in out.gaps if g.metric == "delta_ce" and g.basis == basis]
        assert len(rows) == 3
        for g in rows:
            miss = [(g.at < r.min(1)) | (g.at > r.max(1))
                    for r in (reps[("medical", basis)], reps[("broad", basis)])]
            assert g.dropped == int((miss[0] | miss[1]).sum())
    typical = [g for g in out.gaps if g.metric == "delta_ce" and g.basis == "fve_typical"]
    assert sum(g.dropped for g in typical) > 0  # the jitter pushes some out
    worst = max(typical, key=lambda g: g.dropped)
    frame = pd.DataFrame([g.to_dict() for g in out.gaps])
    table = gap_table(frame, ["delta_ce"], basis="fve_typical", dropped=True)
    cell = table.loc[("medical", worst.at), DROPPED_COLUMN]
    assert cell == f"{worst.dropped:,} of {N_BOOT:,} ({worst.dropped / N_BOOT:.1%})"
    sentence = dropped_sentence(frame, ["delta_ce"], "medical", basis="fve_typical")
    assert (f"delta_ce {worst.dropped:,} of {N_BOOT:,} ({worst.dropped / N_BOOT:.1%}, "
            f"at typical FVE {worst.at:.3f})") in sentence


def test_verdicts():
    yes, no = Interval(0.1, 0.05, 0.15), Interval(0.1, -0.02, 0.2)
    assert verdict([yes, yes]) == "supported"
    assert verdict([yes, no]) == "not supported"
    assert verdict([yes], [yes]) == "supported"
    assert verdict([yes], [no]) == "not separable from FVE"
    assert verdict([yes], []) == "supported at the same L0; no common FVE range"
    untested = Interval(0.1, None, None)  # every replicate of the grid point dropped
    assert verdict([yes], [untested]) == "supported at the same L0; no common FVE range"
    assert verdict([yes], [yes, untested]) == "supported"
    assert verdict([yes], [no, untested]) == "not separable from FVE"
    assert verdict([Interval(-0.1, -0.2, -0.05)], sign=-1) == "supported"
    assert verdict([Interval(-0.1, -0.2, -0.05)]) == "not supported"
    assert verdict([]) == "not supported"


def test_gap_rows_round_trip_through_the_book_helpers(resample):
    """Gap.to_dict rows as a DataFrame: oriented either way, read back as Intervals."""
    import pandas as pd

    from sae_med.report.claims import gap_intervals, oriented_gaps
    from sae_med.report.notebook import gap_table

    out = compare(family("medical", (0.20, 0.21), resample)
                  + family("broad", (0.30, 0.31), resample), "medical",
                  ("medical", "broad"), seed=1)
    gaps = pd.DataFrame([g.to_dict() for g in out.gaps])
    assert {"row_type", "basis", "l0_target", "fve", "value", "low", "high",
            "excludes_zero", "versus"} <= set(gaps.columns)
    [iv] = gap_intervals(oriented_gaps(gaps, "medical", "broad"), "fve", "medical")
    [flipped] = gap_intervals(oriented_gaps(gaps, "broad", "medical"), "fve", "medical")
    assert (flipped.value, flipped.low, flipped.high) == pytest.approx((-iv.value, -iv.high,
                                                                        -iv.low))
    assert iv.excludes_zero and verdict([iv]) == "supported"
    assert gap_table(gaps, ["fve"]).iloc[0, 0].endswith("*")


# --------------------------------------------------------------------------------------
# Steps between target L0s
# --------------------------------------------------------------------------------------

def doc_mean(values: np.ndarray, resample) -> Draws:
    """The mean of per-document ``values`` on all documents and on each resample."""
    counts = resample.counts.numpy()
    return Draws(float(values.mean()), counts @ values / counts.sum(1))


def test_a_step_is_the_difference_of_the_two_families(resample):
    saes = [s for t, q in zip(TARGETS, ((0.4, 0.42), (0.3, 0.31), (0.2, 0.22)), strict=True)
            for s in family("medical", q, resample, t)]
    out = compare(saes, "medical", ("medical",), seed=1)
    fam = {f.at: f.interval.value for f in out.families
           if f.metric == "fve" and f.basis == "l0_target"}
    steps = [s for s in out.steps if s.metric == "fve"]
    assert [(s.from_target, s.to_target) for s in steps] == [(10.0, 20.0), (20.0, 40.0)]
    for s in steps:
        assert s.interval.value == pytest.approx(fam[s.to_target] - fam[s.from_target])
        assert s.interval.excludes_zero and s.interval.low > 0  # better SAEs, higher FVE
    assert steps[0].to_dict() == {
        "row_type": "step", "eval_corpus": "medical", "train_corpus": "medical",
        "metric": "fve", "from_target": 10.0, "to_target": 20.0, "n_boot": N_BOOT,
        "dropped": 0, **steps[0].interval.to_dict()}


def test_pairing_resolves_a_step_that_the_family_intervals_do_not(resample):
    """Two targets whose per-document values differ by a constant shift under document
    noise ten times larger: the families' intervals overlap, the paired step's does not
    reach 0."""
    rng = np.random.default_rng(0)
    docs = 2.0 * rng.standard_normal(N_DOCS)  # document difficulty, shared by every SAE
    saes = [SaeDraws("medical", t, r, {
                "delta_ce": doc_mean(docs + level + 0.01 * r
                                     + 0.02 * rng.standard_normal(N_DOCS), resample),
                "fve": Draws(1 - level, np.full(N_BOOT, 1 - level))})  # compare needs one
            for t, level in ((20.0, 1.0), (40.0, 0.8)) for r in range(2)]
    out = compare(saes, "medical", ("medical",), seed=1)
    fam = {f.at: f.interval for f in out.families
           if f.metric == "delta_ce" and f.basis == "l0_target"}
    assert fam[20.0].low < fam[40.0].high  # overlapping: unresolved unpaired
    [step] = [s for s in out.steps if s.metric == "delta_ce"]
    assert step.interval.value == pytest.approx(-0.2, abs=0.02)
    assert step.interval.high < 0
    assert trend_verdict([step.interval]) == "falls with L0"


def test_steps_join_only_neighbouring_complete_families(resample):
    """broad has both seeds at 10 and 40 but one at 20: no mean there, so no step to or
    from 20 and no step over it; medical steps 10 → 20 → 40, never 10 → 40."""
    saes = [s for t in TARGETS for s in family("medical", (0.3, 0.31), resample, t)]
    saes += [s for t in TARGETS for s in family("broad", (0.4, 0.41), resample, t)
             if not (t == 20.0 and s.replicate == 1)]
    out = compare(saes, "medical", ("medical", "broad"), seed=1)
    pairs = {(s.train_corpus, s.from_target, s.to_target) for s in out.steps}
    assert pairs == {("medical", 10.0, 20.0), ("medical", 20.0, 40.0)}
    assert {s.metric for s in out.steps} == {"fve"}


def test_trend_verdicts():
    down, up, flat = Interval(-0.1, -0.2, -0.05), Interval(0.1, 0.05, 0.2), \
        Interval(-0.1, -0.2, 0.01)
    assert trend_verdict([down, down]) == "falls with L0"
    assert trend_verdict([up]) == "rises with L0"
    assert trend_verdict([down, flat]) == "not resolved"
    assert trend_verdict([down, up]) == "not resolved"
    assert trend_verdict([Interval(-0.1, None, None)]) == "not resolved"
    assert trend_verdict([]) == "not resolved"


# --------------------------------------------------------------------------------------
# Contrasts across eval corpora: difference-in-differences and home excess
# --------------------------------------------------------------------------------------

def on_text(text: str, qualities: dict[str, tuple[float, ...]], resample_seed: int,
            corpora: tuple[str, ...], seed: int = 1):
    """:func:`compare` on one eval corpus whose documents are resampled with
    ``resample_seed`` (each text its own documents), families of the given qualities."""
    r = doc_resample([torch.arange(N_DOCS)], N_BOOT, seed=resample_seed)
    saes = [s for c, q in qualities.items() for s in family(c, q, r)]
    return compare(saes, text, corpora, seed=seed)


def fve_contrast(rows, kind: str):
    [c] = [c for c in rows if c.kind == kind and c.metric == "fve"]
    return c


def test_gaps_cover_every_pair_of_training_corpora(resample):
    q = (0.30, 0.33, 0.36)
    out = compare(family("medical", q, resample) + family("broad", q, resample)
                  + family("mixed_10", q, resample), "medical",
                  ("medical", "broad", "mixed_10"), seed=1)
    pairs = {(g.train_corpus, g.versus) for g in out.gaps}
    assert pairs == {("medical", "broad"), ("medical", "mixed_10"), ("broad", "mixed_10")}


def test_identical_home_advantages_give_a_did_interval_containing_zero():
    corpora = ("medical", "broad")
    good, bad = (0.20, 0.21, 0.22), (0.30, 0.31, 0.32)
    by_eval = {"medical": on_text("medical", {"medical": good, "broad": bad}, 5, corpora),
               "broad": on_text("broad", {"medical": bad, "broad": good}, 6, corpora)}
    did = fve_contrast(contrasts(by_eval, corpora), "did")
    assert (did.first, did.second, did.reference, did.at) == ("medical", "broad", None, 20.0)
    assert did.interval.value == pytest.approx(0.0, abs=1e-12)
    assert did.interval.low < 0 < did.interval.high


def test_a_larger_home_advantage_gives_a_did_excluding_zero():
    corpora = ("medical", "broad")
    by_eval = {"medical": on_text("medical", {"medical": (0.10, 0.11, 0.12),
                                              "broad": (0.40, 0.41, 0.42)}, 5, corpora),
               "broad": on_text("broad", {"medical": (0.30, 0.31, 0.32),
                                          "broad": (0.20, 0.21, 0.22)}, 6, corpora)}
    did = fve_contrast(contrasts(by_eval, corpora), "did")
    home = {t: next(g.interval.value for g in c.gaps if g.metric == "fve")
            for t, c in by_eval.items()}  # stored medical - broad on each text
    assert did.interval.value == pytest.approx(home["medical"] + home["broad"])
    assert did.interval.low > 0


def test_home_excess_shares_the_reference_seed_draws_across_texts():
    """The reference SAEs score both texts: drawn jointly, their seed spread cancels in
    (domain − reference) − (placebo − reference); drawn apart, it widens the interval."""
    corpora = ("medical", "broad", "go")
    even, spread = (0.25, 0.25, 0.25), (0.05, 0.30, 0.55)
    texts = {t: {"medical": even, "broad": spread, "go": even} for t in corpora}

    def excess(seeds: dict[str, int]):
        by_eval = {t: on_text(t, q, 5 + i, corpora, seeds[t])
                   for i, (t, q) in enumerate(texts.items())}
        return fve_contrast(contrasts(by_eval, corpora), "home_excess").interval

    joint = excess(dict.fromkeys(corpora, 1))
    apart = excess({"medical": 1, "broad": 1, "go": 2})
    assert joint.value == pytest.approx(apart.value)
    assert (joint.high - joint.low) < 0.5 * (apart.high - apart.low)
