"""Print a learning curve's tables from its run folder (value [95% interval]): each side's
across-seed means per budget on the domain text, and on its own text where the curve scored
both, the held-out dead fraction (mean [min, max] over seeds), the paired gaps per budget,
each claim's trend and the summary the book glues. Reads the scored budgets only
(``learning_curve/tokens_<n>.json``); nothing is run.

    .venv/bin/python benchmarks/curve_table.py runs/default_curve
"""

from __future__ import annotations

import sys
from pathlib import Path

from sae_med.config import config_from_dict
from sae_med.layout import CURVE_DIR
from sae_med.measure.results import read_results
from sae_med.report.claims import oriented_gaps
from sae_med.report.learning_curve import (
    CurvePoint,
    claim_trends,
    curve_summary,
    curve_tables,
    seed_summary,
    trend_frame,
)
from sae_med.report.notebook import domain_pair, family_table, gap_table

FAMILY = ["l0", "fve", "fve_typical", "delta_ce", "loss_recovered", "kl_score",
          "dark_matter.r2_error_mean"]
GAPS = ["fve", "fve_typical", "delta_ce", "loss_recovered", "dark_matter.r2_error_mean"]


def scored_points(run: Path) -> list[CurvePoint]:
    """The budgets scored so far in ``run``, smallest first."""
    files = {int(p.stem.removeprefix("tokens_")): p
             for p in (run / CURVE_DIR).glob("tokens_*.json")}
    if not files:
        raise SystemExit(f"curve_table: no scored budgets in {run / CURVE_DIR}; run "
                         "`sae-med learning-curve CONFIG` first")
    return [CurvePoint(n, files[n]) for n in sorted(files)]


def main(run: Path) -> None:
    points = scored_points(run)
    cfg = config_from_dict(read_results(points[-1].results)["config"])
    domain, broad = domain_pair(cfg)
    tables = curve_tables(points)
    fam = tables.families[tables.families.eval_corpus == domain]
    # each side's quality at home (issue 31's equal baselines): the broad SAE on broad text
    own = tables.families[(tables.families.eval_corpus == tables.families.train_corpus)
                          & tables.families.eval_corpus.isin([domain, broad])]
    gaps = oriented_gaps(tables.gaps, domain, broad)
    dead = seed_summary(tables.rows, "dead_frac")
    trends = claim_trends(tables, domain, broad)
    for title, t in (
            (f"Each side on {domain} text, per budget", family_table(fam, FAMILY, by=["tokens"])),
            ("Each side on its own text, per budget",
             family_table(own, FAMILY, by=["tokens"]) if own.eval_corpus.nunique() > 1
             else own.iloc[:0]),
            ("Held-out dead fraction (mean, min, max over seeds)", dead.round(4)),
            (f"{domain} minus {broad} on {domain} text, per budget",
             gap_table(gaps[gaps.eval_corpus == domain], GAPS, by=["tokens"])),
            ("Trends", trend_frame(trends, points[0].tokens, points[-1].tokens))):
        print(f"\n{title}\n")
        print(t.to_markdown() if len(t) else "(none)")
    print(f"\n{curve_summary(cfg, points, trends)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default_curve"))
