"""Chapter 4's tables, figures and sentence (dark matter: the linearly predictable part of
an SAE's error), from the run's results document and comparison tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import pandas as pd
import plotly.graph_objects as go

from sae_med.measure.compare import NOT_JUDGED
from sae_med.report.claims import gap_intervals
from sae_med.report.fidelity import family_values, joined
from sae_med.report.notebook import gap_sentence, metric_vs_l0

PREFIX = "dark_matter."
GOOD_RATIO = 10.0
"""Fit tokens per regression input (d_model + 1) from which the held-out R² reads as a
result rather than a test of the plumbing."""
FIGURE_METRICS = {"r2_error_mean": "R² of the error vector (mean over dims)",
                  "r2_norm": "R² of ‖e‖²",
                  "fvu_linear": "linearly predictable error (share of Var x)",
                  "fvu_nonlinear": "nonlinear error (share of Var x)"}
VERDICT_WORDS = {
    "supported": "is less linearly predictable, also beyond what its higher FVE explains",
    "not separable from FVE": "is less linearly predictable at the same L0, but that is not "
                              "shown at matched FVE (a gap interval there includes 0): it is "
                              "not separable from its higher FVE",
    "supported at the same L0; no common FVE range": (
        "is less linearly predictable at the same L0; the two families' FVE ranges do not "
        "overlap, so whether that goes beyond its higher FVE is untested"),
    "not supported": "is not less linearly predictable at every target L0",
    NOT_JUDGED: "is not judged: the SAEs are below the quality bar (notebook 3)"}
"""What each dark-matter verdict says about the domain SAE's error."""


class FitSizes(NamedTuple):
    """Tokens behind each dark-matter fit, and the inputs of its linear map."""

    table: pd.DataFrame
    """One row per (SAE, eval corpus): fit tokens and held-out tokens."""
    d_model: int
    """Residual width (0 when the results hold no rows)."""

    @property
    def ratio(self) -> float:
        """The fewest fit tokens per regression input (d_model + 1); 0 for no fits."""
        return (float(self.table["fit tokens"].min()) / (self.d_model + 1)
                if len(self.table) else 0.0)

    @property
    def note(self) -> str:
        """Whether :attr:`ratio` reads as a result."""
        return ("enough for a stable fit" if self.ratio >= GOOD_RATIO else
                "too few: the R² values below are a test of the plumbing, not results")


def dark_matter_fits(doc: Mapping[str, Any]) -> FitSizes:
    """The fit sizes of a results document (:func:`sae_med.measure.results.read_results`)."""
    rows = doc["rows"]
    table = pd.DataFrame([{"SAE": r["sae_id"], "eval corpus": r["eval_corpus"],
                           "fit tokens": r["dark_matter"].get("n_train"),
                           "held-out tokens": r["dark_matter"].get("n_eval")}
                          for r in rows if "dark_matter" in r])
    return FitSizes(table, int(rows[0].get("d_model") or 0) if rows else 0)


def dark_matter_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The dark-matter rows of a tidy table, their metrics without the ``dark_matter.``
    prefix."""
    dm = table[table.metric.str.startswith(PREFIX)].copy()
    dm["metric"] = dm.metric.str.removeprefix(PREFIX)
    return dm


def dark_matter_figures(families: pd.DataFrame) -> list[go.Figure]:
    """Each score of :data:`FIGURE_METRICS` against L0: the families' across-seed means
    with their intervals."""
    at_target = families[families.basis == "l0_target"]
    both = pd.concat([dark_matter_rows(at_target), at_target[at_target.metric == "l0"]])
    return [metric_vs_l0(both, metric, label, f"{label} vs L0")
            for metric, label in FIGURE_METRICS.items()]


def dark_matter_sentence(med_gaps: pd.DataFrame, verdict: str, medical: str) -> str:
    """The verdict in words, with the R²(e) gaps at each target L0 and at matched FVE and
    the gap of the linearly predictable share at matched FVE."""
    r2_l0 = gap_intervals(med_gaps, PREFIX + "r2_error_mean", medical)
    r2_fve = gap_intervals(med_gaps, PREFIX + "r2_error_mean", medical, basis="fve")
    lin_fve = gap_intervals(med_gaps, PREFIX + "fvu_linear", medical, basis="fve")
    return (f"On held-out {medical} text, the {medical} SAE's error {VERDICT_WORDS[verdict]} "
            f"(R²(e) gap by target L0: "
            + "; ".join(f"{iv.value:.3f}" for iv in r2_l0) + "; at matched FVE: "
            + ("; ".join(f"{iv.value:.3f}" for iv in r2_fve) or "no overlap") + "). "
            + gap_sentence(lin_fve, "The linearly predictable share of Var(x) differs",
                           "at matched FVE by"))


def family_value_texts(families: pd.DataFrame, medical: str, broad: str) -> dict[str, str]:
    """The R²(e) and nonlinear FVU of each family on medical text by target L0, as chapter 4
    quotes them (its myst-nb ``glue`` names)."""
    return {f"{name}_{key}_sae": joined(family_values(families, PREFIX + metric, c, medical))
            for name, metric in (("r2e", "r2_error_mean"), ("fvu_nl", "fvu_nonlinear"))
            for c, key in ((medical, "medical"), (broad, "broad"))}
