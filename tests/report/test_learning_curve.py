"""The learning curve: trends from intervals, claims along the curve, and the stage that
scores every snapshot (on a tiny random Gemma-2 with the real corpora)."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from synthetic_runs import benchmark_script

from sae_med.config import load_config
from sae_med.experiment import stage_learning_curve
from sae_med.measure.bootstrap import Interval
from sae_med.measure.compare import NOT_JUDGED
from sae_med.report.claims import DCE_BAR_NATS
from sae_med.report.learning_curve import (
    CurveTables,
    claim_trends,
    curve_sentence,
    curve_summary,
    curve_tables,
    seed_summary,
    trend,
)


def test_trend_needs_intervals_that_do_not_overlap():
    small, large = Interval(0.10, 0.08, 0.12), Interval(0.20, 0.18, 0.22)
    assert trend(small, large, +1) == "grows"
    assert trend(large, small, +1) == "shrinks"
    assert trend(small, Interval(0.13, 0.11, 0.15), +1) == "holds"  # overlap
    # smaller is better: a gap going from -0.1 to -0.2 grows in the domain's favour
    assert trend(Interval(-0.10, -0.12, -0.08), Interval(-0.20, -0.22, -0.18), -1) == "grows"
    assert trend(small, Interval(0.2, None, None), +1) == "holds"  # no interval


def _gap(tokens: int, metric: str, value: float, first: str = "medical",
         versus: str = "broad") -> dict:
    return {"row_type": "gap", "eval_corpus": "medical", "train_corpus": first,
            "versus": versus, "metric": metric, "basis": "l0_target", "l0_target": 40.0,
            "fve": None, "value": value, "low": value - 0.01, "high": value + 0.01,
            "excludes_zero": abs(value) > 0.01, "tokens": tokens}


def test_claim_trends_orient_and_judge_the_ends():
    gaps = pd.DataFrame([
        _gap(1000, "fve", 0.05), _gap(3000, "fve", 0.07), _gap(9000, "fve", 0.20),
        # stored the other way round (broad minus medical): read as medical minus broad
        _gap(1000, "loss_recovered", -0.10, "broad", "medical"),
        _gap(9000, "loss_recovered", -0.003, "broad", "medical"),
        _gap(1000, "dark_matter.r2_error_mean", -0.30), _gap(9000, "dark_matter.r2_error_mean",
                                                            -0.295)])
    by = {t.metric: t for t in claim_trends(CurveTables(pd.DataFrame(), gaps, None),
                                            "medical", "broad")}
    assert set(by) == {"fve", "loss_recovered", "dark_matter.r2_error_mean"}
    assert (by["fve"].first.value, by["fve"].last.value) == (0.05, 0.20)
    assert (by["fve"].verdict, by["fve"].trend) == ("supported", "grows")
    assert by["loss_recovered"].first.value == pytest.approx(0.10)
    assert (by["loss_recovered"].verdict, by["loss_recovered"].trend) == (
        "not supported", "shrinks")
    assert (by["dark_matter.r2_error_mean"].verdict,
            by["dark_matter.r2_error_mean"].trend) == ("supported", "holds")
    # the largest budget's domain SAEs fail the quality bar: nothing is judged there
    def wrecked(tokens: int) -> pd.DataFrame:
        return pd.DataFrame([{
            "eval_corpus": "medical", "train_corpus": "medical", "metric": "delta_ce",
            "basis": "l0_target", "l0_target": 40.0, "value": DCE_BAR_NATS * 2,
            "low": DCE_BAR_NATS * 1.5, "high": DCE_BAR_NATS * 2.5, "tokens": tokens}])

    gated = claim_trends(CurveTables(wrecked(9000), gaps, None), "medical", "broad")
    assert {t.verdict for t in gated} == {NOT_JUDGED}
    early = claim_trends(CurveTables(wrecked(1000), gaps, None), "medical", "broad")
    assert [t.verdict for t in early] == [t.verdict for t in by.values()]


def test_curve_sentence_counts_claims_not_the_sensitivity_check():
    """fve fails, fve_typical (a sensitivity check) and the other two claims hold: the
    summary says 2 of 3 claims supported and labels the check, listed after the claims."""
    gaps = pd.DataFrame([_gap(t, m, v) for t in (1000, 9000) for m, v in (
        ("fve", 0.0), ("fve_typical", 0.1), ("loss_recovered", 0.1),
        ("dark_matter.r2_error_mean", -0.3))])
    trends = claim_trends(CurveTables(pd.DataFrame(), gaps, None), "medical", "broad")
    assert [t.counted for t in trends] == [True, True, True, False]
    text = curve_sentence(trends, 9000)
    assert text.startswith("After 9,000 training tokens, 2 of 3 claims supported")
    assert "Sensitivity check, not a claim: FVE without massive-activation tokens: " \
           "“supported”" in text


def test_stage_scores_every_snapshot_and_reuses_them(tiny_lm_dirs, tmp_path, capsys):
    cfg = load_config("configs/smoke.yaml", [
        f"model.name={tiny_lm_dirs['gemma2']}", "model.hook_layer=1",
        f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
        "replications={}", "train_corpora=[medical, broad]", "cache.n_tokens=1024",
        "cache.shard_tokens=512",
        "sae.width=64", "train.batch_size=256", "eval.n_tokens=512", "eval.ce_docs=4",
        "eval.bootstrap=10",
        "learning_curve={eval_corpora: [medical, broad], sae: {l0_targets: [4]}, "
        "train: {n_tokens: 4096, "
        "snapshot_tokens: [1000, 2048]}}"])
    curve = cfg.learning_curve_config()
    points = stage_learning_curve(curve, progress=False)
    assert [p.tokens for p in points] == [1000, 2048, 4096]
    for p in points:
        doc = json.loads(p.results.read_text())
        assert sorted((r["sae_id"], r["eval_corpus"]) for r in doc["rows"]) == [
            ("broad/seed_0/l0_4", "broad"), ("broad/seed_0/l0_4", "medical"),
            ("medical/seed_0/l0_4", "broad"), ("medical/seed_0/l0_4", "medical")]
        meta = doc["rows"][0]["sae_metadata"]
        # a snapshot is taken after the first step that reaches its budget
        assert meta["tokens"] == -(-p.tokens // 256) * 256
        assert meta.get("snapshot_tokens", 4096) == p.tokens
    mtimes = [p.results.stat().st_mtime_ns for p in points]
    assert stage_learning_curve(curve, progress=False) == points
    assert [p.results.stat().st_mtime_ns for p in points] == mtimes  # reused, not redone

    tables = curve_tables(points)
    assert sorted(tables.gaps.tokens.unique()) == [1000, 2048, 4096]
    dead = seed_summary(tables.rows, "dead_frac")
    assert len(dead) == 12 and dead["mean"].between(0, 1).all()  # 3 budgets, 2 sides, 2 texts
    text = curve_summary(curve, points, claim_trends(tables, "medical", "broad"))
    assert "1,000, 2,048, 4,096 training tokens" in text and "after 4,096" in text
    assert "snapshots of the longest run" in text and "run of its own" not in text
    assert "no `learning_curve`" in curve_summary(None, [], [])
    with pytest.raises(ValueError, match="saves no snapshots"):
        stage_learning_curve(cfg, progress=False)

    # train.snapshots_annealed: each budget below the last is a run of its own, decayed to
    # its end, in {run}/annealed/tokens_<budget> (same caches, scored the same way)
    annealed = dataclasses.replace(curve, train=dataclasses.replace(
        curve.train, snapshots_annealed=True))
    points = stage_learning_curve(annealed, progress=False)
    assert [p.tokens for p in points] == [1000, 2048, 4096]
    for p in points[:-1]:
        meta = json.loads(p.results.read_text())["rows"][0]["sae_metadata"]
        assert "snapshot_tokens" not in meta and meta["tokens"] == -(-p.tokens // 256) * 256
        assert (curve.run_path / "annealed" / f"tokens_{p.tokens}" / "saes" / "medical" /
                "seed_0" / "l0_4" / "sae.safetensors").exists()
    text = curve_summary(annealed, points, [])
    assert "each budget a run of its own" in text and "snapshots of" not in text

    # benchmarks/curve_table.py prints the scored run's tables (what RESULTS.md quotes)
    script = benchmark_script("curve_table")
    capsys.readouterr()
    script.main(curve.run_path)
    out = capsys.readouterr().out
    assert "('medical', 'medical', 4.0, 1000)" in out and "('medical', 4.0, 4096)" in out
    own = out.split("Each side on its own text, per budget")[1].split("Held-out dead")[0]
    assert "('broad', 'broad', 4.0, 1000)" in own and "('medical', 'medical', 4.0, 4096)" in own
    assert "('medical', 'broad'" not in own and "('broad', 'medical'" not in own
    summary = out.rstrip().splitlines()[-1]  # the book's sentence, with the trends
    assert "each budget a run of its own" in summary and "after 4,096 training" in summary
    with pytest.raises(SystemExit, match="no scored budgets"):
        script.main(tmp_path / "nothing")
