"""Runs side by side (sae_med.report.side_by_side) on synthetic runs with planted home
advantages, and the dead-latent remedy pair: present, absent, at another budget, or of
another experiment."""

from __future__ import annotations

import dataclasses

import pytest
from synthetic_runs import benchmark_script, write_synthetic_results

from sae_med.config import load_config
from sae_med.report.learning_curve import CurvePoint
from sae_med.report.side_by_side import (
    REMEDY_COMMAND,
    remedy_pair,
    side_by_side,
    side_by_side_verdicts,
)

OFF = {("medical", "medical"): 0.10, ("broad", "broad"): 0.02}
ON = {("medical", "medical"): 0.02, ("broad", "broad"): 0.10}


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """The curve's longest run (remedy off) and the remedy run, with opposite home
    advantages planted: medical wins at home by 0.10 without the remedy, broad with it."""
    root = tmp_path_factory.mktemp("side_by_side")
    curve = load_config("configs/long.yaml").learning_curve_config()
    remedy = load_config("configs/remedy_long.yaml")
    off = write_synthetic_results(root / "off.json", curve, OFF)
    on = write_synthetic_results(root / "on.json", remedy, ON)
    return CurvePoint(remedy.train.n_tokens, off), on, remedy


def _home(pair, run, side):
    """The home advantage in FVE of ``side`` in ``run`` at target 10, as a number."""
    return float(pair.home.loc[(run, side, slice(None), 10.0), "fve"].iloc[0].split()[0])


def test_each_run_shows_what_was_planted(pair_files):
    point, on, _ = pair_files
    pair = side_by_side({"off": point.results, "on": on})
    assert [r.label for r in pair.runs] == ["off", "on"]
    assert _home(pair, "off", "medical") == pytest.approx(0.10, abs=0.01)
    assert _home(pair, "on", "broad") == pytest.approx(0.10, abs=0.01)
    assert _home(pair, "on", "medical") == pytest.approx(0.02, abs=0.01)
    assert set(pair.own.index.get_level_values("run")) == {"off", "on"}
    verdicts = side_by_side_verdicts(pair.runs)
    assert {"off", "on", "same verdict on every run"} <= set(verdicts.columns)
    assert not verdicts["same verdict on every run"].eq("yes").all()


def test_remedy_pair_reads_the_curve_budget_of_its_tokens(pair_files):
    point, on, _ = pair_files
    found = remedy_pair([CurvePoint(1_000_000, point.results), point], on)
    assert found.pair is not None and str(point.results) in found.note
    assert [r.label for r in found.pair.runs] == ["off", "on"]


def test_remedy_pair_says_why_there_is_none(pair_files, tmp_path):
    point, on, remedy = pair_files
    absent = remedy_pair([point], tmp_path / "absent.json")
    assert absent.pair is None and REMEDY_COMMAND in absent.note
    other_budget = remedy_pair([CurvePoint(2_000_000, point.results)], on)
    assert other_budget.pair is None and "no budget of 10,000,000" in other_budget.note
    moved = dataclasses.replace(remedy, seed=remedy.seed + 1)
    elsewhere = write_synthetic_results(tmp_path / "other.json", moved, ON)
    other = remedy_pair([point], elsewhere)
    assert other.pair is None and "not this curve's experiment" in other.note


def test_benchmark_prints_both_runs_and_their_counts(pair_files, capsys):
    point, on, _ = pair_files
    benchmark_script("runs_side_by_side").main([f"off={point.results}", f"on={on}"])
    out = capsys.readouterr().out
    assert "Home advantages" in out and "Each side on its own held-out text" in out
    assert "\noff: " in out and "\non: " in out and "claims supported" in out
