"""Chapter 7's sentences, figures and quoted values (where an SAE's spliced loss comes
from), from :func:`sae_med.measure.diagnose.diagnose_saes`' reports."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.express as px
import plotly.graph_objects as go

from sae_med.measure.diagnose import DamageReport, bins_frame

BREAKDOWNS = {"by_position": "token position", "by_norm_decile": "‖x‖ decile",
              "by_frequency": "token frequency quintile (rarest first)"}
"""The :class:`~sae_med.measure.diagnose.DamageReport` breakdowns and their axis titles."""


def delta_ce(r: DamageReport) -> float:
    """The report's ΔCE = CE(spliced) − CE(clean), in nats per token."""
    return r.ce_spliced - r.ce_clean


def damage_sentence(name: str, r: DamageReport) -> str:
    """One SAE's ΔCE against random error of the same size and its loss recovered against
    both baselines."""
    return (f"{name} SAE: ΔCE {delta_ce(r):.3f} nats against "
            f"{r.random.isotropic:.3f} for random error of the same per-token norm "
            f"({r.random.in_subspace:.3f} inside its error subspace, "
            f"{r.random.subspace_dim} dimensions); loss recovered "
            f"{r.loss_recovered_vs_zero:.3f} against zero ablation, "
            f"{r.loss_recovered_vs_mean:.3f} against mean ablation.")


def damage_text(reports: Mapping[str, DamageReport]) -> str:
    """:func:`damage_sentence` of every report, one a line."""
    return "\n".join(damage_sentence(name, r) for name, r in reports.items())


def damage_values(reports: Mapping[str, DamageReport]) -> dict[str, str]:
    """Each SAE's ΔCE beyond random error (isotropic, and inside its error subspace) and the
    share of the residual that is its mean, by glue name."""
    return {
        "damage_excess": ", ".join(f"{k} {delta_ce(r) - r.random.isotropic:+.2f}"
                                   for k, r in reports.items()),
        "damage_excess_subspace": ", ".join(f"{k} {delta_ce(r) - r.random.in_subspace:+.2f}"
                                            for k, r in reports.items()),
        "mean_share": f"{next(iter(reports.values())).mean_share:.2f}"}


def breakdown_figures(reports: Mapping[str, DamageReport]) -> list[go.Figure]:
    """Mean ΔCE per bin of each breakdown of :data:`BREAKDOWNS`, bars grouped by SAE."""
    return [px.bar(bins_frame(reports, field), x="bin", y="delta_ce", color="sae",
                   barmode="group", title=f"Mean ΔCE by {title}",
                   labels={"delta_ce": "mean ΔCE (nats)", "bin": title})
            for field, title in BREAKDOWNS.items()]
