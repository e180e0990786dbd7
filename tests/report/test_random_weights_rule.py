"""The random-weights control's rule is frozen by version, like the claims' rules."""

from __future__ import annotations

from sae_med.measure.controls import LOSS_RULE
from sae_med.report.random_weights import control_rule_fingerprint

RECORDED = {2: "c99d978c4079a2cb", 3: "908e29ddeab4abac"}
"""Every version of :data:`~sae_med.measure.controls.LOSS_RULE` and its fingerprint; a new
version is a new line, never an edit of a recorded one (version 1, the ungated rule,
predates fingerprints)."""


def test_the_control_rule_does_not_change_without_a_new_version():
    got = control_rule_fingerprint()
    assert LOSS_RULE.version in RECORDED, (
        f"control rule version {LOSS_RULE.version} is not recorded: add "
        f'{LOSS_RULE.version}: "{got}" to RECORDED in {__file__}')
    assert RECORDED[LOSS_RULE.version] == got, (
        "the control rule changed but its version did not: bump LOSS_RULE.version and "
        f"record the new fingerprint {got}")


def test_the_fingerprint_sees_a_changed_margin_and_ignores_the_version():
    base = control_rule_fingerprint()
    assert control_rule_fingerprint(LOSS_RULE._replace(below_uniform_nats=0.5)) != base
    assert control_rule_fingerprint(LOSS_RULE._replace(zero_ablation_nats=0.5)) != base
    assert control_rule_fingerprint(LOSS_RULE._replace(version=99)) == base


def test_the_fingerprint_sees_changed_judging_code(monkeypatch):
    import sae_med.measure.controls as controls
    import sae_med.report.random_weights as rw

    base = control_rule_fingerprint()

    def lenient(b, rule=LOSS_RULE):  # a gate that lets every model through
        return True

    monkeypatch.setattr(rw, "has_loss_to_lose", lenient)
    monkeypatch.setattr(controls, "has_loss_to_lose", lenient)
    assert control_rule_fingerprint() != base
