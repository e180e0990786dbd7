"""Print the headline tables of an experiment's results JSON (value [95% interval]): every
SAE (one row per seed replicate), the across-seed family means with each replicate's value,
and the paired gaps (first training corpus minus the others) at each target L0 and at
matched FVE (`*`: the interval excludes 0).

    .venv/bin/python benchmarks/results_table.py runs/default/results.json
"""

from __future__ import annotations

import sys

import pandas as pd

from sae_med.evaluate import load_comparisons, load_results
from sae_med.notebook import family_table, gap_table

METRICS = ["l0", "fve", "delta_ce", "loss_recovered", "loss_recovered_mean", "kl_score",
           "dead_frac", "dark_matter.r2_error_mean", "dark_matter.fvu_linear",
           "dark_matter.fvu_nonlinear"]
BASELINES = ["ce_clean", "ce_zero", "ce_mean_ablation"]
MATCHED = ["l0", "delta_ce", "loss_recovered", "loss_recovered_mean",
           "dark_matter.r2_error_mean", "dark_matter.fvu_linear",
           "dark_matter.fvu_nonlinear"]


def main(path: str) -> None:
    df = load_results(path)
    df = df[df.metric.isin(METRICS)]
    cell = df.apply(lambda r: f"{r.value:.3f}" + (f" [{r.low:.3f}, {r.high:.3f}]"
                                                   if pd.notna(r.low) else ""), axis=1)
    table = df.assign(cell=cell).pivot_table(
        index=["eval_corpus", "train_corpus", "l0_target", "replicate"], columns="metric",
        values="cell", aggfunc="first")
    print(table[[m for m in METRICS if m in table.columns]].to_markdown())
    base = load_results(path)
    base = base[base.metric.isin(BASELINES)].groupby(["eval_corpus", "metric"]).value.first()
    print("\nCE baselines shared by every SAE (nats per token)\n")
    print(base.unstack().to_markdown())
    comp = load_comparisons(path)
    for title, t in (("Across-seed means", family_table(comp.families, METRICS)),
                     ("Gaps at each target L0", gap_table(comp.gaps, METRICS)),
                     ("Gaps at matched FVE", gap_table(comp.gaps, MATCHED, basis="fve"))):
        print(f"\n{title}\n")
        print(t.to_markdown() if len(t) else "(none)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/default/results.json")
