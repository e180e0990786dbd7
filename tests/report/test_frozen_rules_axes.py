"""The width axis's and the architecture matrix's rules are frozen by version, like the
claims' rules: a recorded fingerprint per version, and a fingerprint that sees every field,
the quality bar and the judging code but not the version."""

from __future__ import annotations

import pytest

import sae_med.report.matrix as matrix
import sae_med.report.width as width
from sae_med.measure.bootstrap import Interval
from sae_med.report.matrix import (
    ALL_METRICS,
    FAILS,
    HOLDS,
    MATRIX_RULE,
    MatrixCell,
    architecture_verdicts,
    matrix_rule_fingerprint,
)
from sae_med.report.width import TOO_FEW, WIDTH_RULE, width_rule_fingerprint, width_trend

RECORDED_WIDTH = {1: "713f046462b738af", 2: "7334d468e073fd1c", 3: "6ec61e09581029ca"}
"""Every version of :data:`~sae_med.report.width.WIDTH_RULE` and its fingerprint; a new
version is a new line, never an edit of a recorded one."""
RECORDED_MATRIX = {1: "e0213f4b62f0a023", 2: "22b2375f27a7bd66"}
"""The same for :data:`~sae_med.report.matrix.MATRIX_RULE`."""


@pytest.mark.parametrize("name, rule, fingerprint, recorded", [
    ("WIDTH_RULE", WIDTH_RULE, width_rule_fingerprint, RECORDED_WIDTH),
    ("MATRIX_RULE", MATRIX_RULE, matrix_rule_fingerprint, RECORDED_MATRIX)])
def test_no_axis_rule_changes_without_a_new_version(name, rule, fingerprint, recorded):
    got = fingerprint()
    assert rule.version in recorded, (
        f"{name} version {rule.version} is not recorded: add {rule.version}: \"{got}\" "
        f"to its RECORDED dict in {__file__}")
    assert recorded[rule.version] == got, (
        f"{name}'s rule changed but its version did not: bump {name}.version and record "
        f"the new fingerprint {got}")


WIDTH_CHANGES = (("target", 20.0), ("widths", (2, 4, 8, 16)),
                 ("signs", (("fve_typical", 1),)), ("versus", ("broad",)),
                 ("mixed", "broad"), ("min_widths", 4), ("draws", 1000), ("seed", 1))
MATRIX_CHANGES = (("signs", (("fve_typical", 1), ("delta_ce", -1))),
                  ("versus", ("mixed_10",)))


@pytest.mark.parametrize("rule, fingerprint, changes", [
    (WIDTH_RULE, width_rule_fingerprint, WIDTH_CHANGES),
    (MATRIX_RULE, matrix_rule_fingerprint, MATRIX_CHANGES)])
def test_the_fingerprint_sees_every_field_and_ignores_the_version(rule, fingerprint, changes):
    assert {f for f, _ in changes} == set(rule._fields) - {"version"}
    base = fingerprint()
    for field, value in changes:
        assert fingerprint(rule._replace(**{field: value})) != base, field
    assert fingerprint(rule._replace(version=99)) == base


@pytest.mark.parametrize("module, fingerprint", [
    (width, width_rule_fingerprint), (matrix, matrix_rule_fingerprint)])
def test_the_fingerprint_sees_the_quality_bar(monkeypatch, module, fingerprint):
    base = fingerprint()
    monkeypatch.setattr(module, "DCE_BAR_NATS", 2.0)
    assert fingerprint() != base


def test_the_fingerprints_see_changed_judging_code(monkeypatch):
    widths, cells = width_rule_fingerprint(), matrix_rule_fingerprint()

    def never(*args, **kwargs):  # a rule that never finds a crossover or a holding cell
        return "never"

    monkeypatch.setattr(width, "crossover", never)
    monkeypatch.setattr(matrix, "cell_verdict", never)
    assert width_rule_fingerprint() != widths and matrix_rule_fingerprint() != cells

    def lenient(families, domain):  # a quality bar every run passes
        return True

    monkeypatch.undo()
    for module in (width, matrix):
        monkeypatch.setattr(module, "meets_quality_bar", lenient)
    assert width_rule_fingerprint() != widths and matrix_rule_fingerprint() != cells


def test_the_judging_code_reads_the_rule():
    """The record is what judges: another rule gives another verdict."""
    two = {2: Interval(0.1, 0.09, 0.11), 32: Interval(0.0, -0.01, 0.01)}
    assert width_trend(two, 1).verdict == TOO_FEW
    assert width_trend(two, 1, WIDTH_RULE._replace(min_widths=2)).verdict != TOO_FEW
    cells = [MatrixCell("relu", "gemma", "broad", "fve_typical", {}, HOLDS),
             MatrixCell("relu", "gemma", "broad", "delta_ce", {}, FAILS)]
    fve_only = MATRIX_RULE._replace(signs=(("fve_typical", 1),))
    assert architecture_verdicts(cells, "relu", "broad", fve_only) == {
        "fve_typical": HOLDS, ALL_METRICS: FAILS}
