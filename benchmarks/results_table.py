"""Print the headline table of an experiment's results JSON (value [95% interval]).

    .venv/bin/python benchmarks/results_table.py runs/default/results.json
"""

from __future__ import annotations

import sys

import pandas as pd

from sae_med.evaluate import load_results

METRICS = ["l0", "fve", "fve_uncentered", "loss_recovered", "delta_ce", "kl_score",
           "dark_matter.r2_error_mean", "dark_matter.r2_norm", "dark_matter.fvu_nonlinear"]


def main(path: str) -> None:
    df = load_results(path)
    df = df[df.metric.isin(METRICS)]
    cell = df.apply(lambda r: f"{r.value:.3f}" + (f" [{r.low:.3f}, {r.high:.3f}]"
                                                   if pd.notna(r.low) else ""), axis=1)
    table = df.assign(cell=cell).pivot_table(
        index=["eval_corpus", "train_corpus", "l0_target"], columns="metric", values="cell",
        aggfunc="first")
    print(table[[m for m in METRICS if m in table.columns]].to_markdown())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/default/results.json")
