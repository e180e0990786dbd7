"""Print the headline tables of an experiment's results JSON (value [95% interval]): every
SAE (one row per seed replicate), the across-seed family means with each replicate's value,
and the paired gaps (first training corpus minus the others) at each target L0 and at
matched FVE (`*`: the interval excludes 0). Given several results files (one per model of
a config and its replications), it prints the per-model verdicts and gaps instead.

    .venv/bin/python benchmarks/results_table.py runs/default/results.json
    .venv/bin/python benchmarks/results_table.py runs/default/results.json runs/smollm2/results.json
"""

from __future__ import annotations

import sys

import pandas as pd

from sae_med.config import config_from_dict
from sae_med.measure.results import load_comparisons, load_results, read_results
from sae_med.report.claims import (
    CLAIMS,
    SENSITIVITY_CHECKS,
    ModelRun,
    model_label,
    support_count,
    verdict_table,
    verdicts_by_claim,
)
from sae_med.report.notebook import domain_pair, family_table, gap_table, gap_table_by_model

METRICS = ["l0", "fve", "fve_typical", "delta_ce", "loss_recovered", "loss_recovered_mean",
           "kl_score", "dead_frac", "dark_matter.r2_error_mean", "dark_matter.fvu_linear",
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


def models(paths: list[str]) -> None:
    runs = []
    for path in paths:
        cfg = config_from_dict(read_results(path)["config"])
        runs.append(ModelRun(model_label(cfg), cfg, load_comparisons(path)))
    first, second = domain_pair(runs[0].cfg)
    print(verdict_table(runs, [c.key for c in CLAIMS], first, second).to_markdown())
    for r in runs:  # sensitivity checks are shown below, never counted here
        print(f"\n{r.label}: {support_count(verdicts_by_claim(r, first, second))}")
    print("\nSensitivity checks (not claims, not counted)\n")
    print(verdict_table(runs, [c.key for c in SENSITIVITY_CHECKS], first, second).to_markdown())
    for title, metrics, basis in (
            (f"{first} minus {second} on {first} text, per model, at each target L0",
             ["fve", "fve_typical", "delta_ce", "loss_recovered_mean",
              "dark_matter.r2_error_mean"], "l0_target"),
            ("... and at matched FVE", ["l0", "delta_ce", "dark_matter.r2_error_mean"],
             "fve")):
        print(f"\n{title}\n")
        print(gap_table_by_model(runs, first, second, metrics, basis).to_markdown())


if __name__ == "__main__":
    if len(sys.argv) > 2:
        models(sys.argv[1:])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "runs/default/results.json")
