"""Print the headline tables of an experiment's results JSON (value [95% interval]): every
SAE (one row per seed replicate) on every eval corpus, the across-seed family means, the
train x eval matrix, the paired gaps between every pair of training corpora at each target
L0, at matched FVE and, where the file has them, at matched typical FVE (`*`: the interval
excludes 0; the matched tables say how many bootstrap replicates each row left out), each
side's home advantage (own SAE
minus another on own text), the difference-in-differences and placebo contrasts with their
verdicts, and the domain SAE against each SAE that saw the domain in a mix. Given several
results files (one per model of a config and its replications), it prints the per-model
verdicts, home advantages and gaps instead.

    .venv/bin/python benchmarks/results_table.py runs/default/results.json
    .venv/bin/python benchmarks/results_table.py runs/domains/results.json
    .venv/bin/python benchmarks/results_table.py runs/default/results.json runs/smollm2/results.json
"""

from __future__ import annotations

import sys

import pandas as pd

from sae_med.config import Config, config_from_dict
from sae_med.measure.results import ComparisonTables, load_comparisons, load_results, read_results
from sae_med.report.claims import (
    CLAIMS,
    SENSITIVITY_CHECKS,
    ModelRun,
    model_label,
    support_count,
    verdict_table,
    verdicts_by_claim,
)
from sae_med.report.domain_report import (
    contrast_table,
    did_verdict_table,
    did_verdicts_by_model,
    family_matrix_table,
    genre_controls,
    home_advantage_table,
    home_excess_table,
    home_sides,
    mixed_corpora,
    mixed_verdict_table,
    mixed_verdicts_by_model,
    own_text_table,
    pair_table,
    placebo_corpora,
    placebo_verdict_table,
    training_dead_fractions,
)
from sae_med.report.notebook import domain_pair, family_table, gap_table, gap_table_by_model

METRICS = ["l0", "fve", "fve_typical", "delta_ce", "loss_recovered", "loss_recovered_mean",
           "kl_score", "dead_frac", "dark_matter.r2_error_mean", "dark_matter.fvu_linear",
           "dark_matter.fvu_nonlinear"]
BASELINES = ["ce_clean", "ce_zero", "ce_mean_ablation"]
MATCHED = ["l0", "delta_ce", "loss_recovered", "loss_recovered_mean",
           "dark_matter.r2_error_mean", "dark_matter.fvu_linear",
           "dark_matter.fvu_nonlinear"]
TYPICAL_MATCHED = ["fve", *MATCHED]
"""The gaps at matched typical FVE (the pooled FVE among them: what massive-activation
tokens carry)."""
HOME = ["fve", "fve_typical", "delta_ce", "loss_recovered", "dark_matter.r2_error_mean"]
"""The metrics of the home-advantage and difference-in-differences tables."""
MATRIX = ["fve_typical", "delta_ce"]
PAIR = ["train_corpus", "versus"]


def show(title: str, table: pd.DataFrame) -> None:
    print(f"\n{title}\n")
    print(table.to_markdown() if len(table) else "(none)")


def run_config(path: str) -> Config:
    return config_from_dict(read_results(path)["config"])


def main(path: str) -> None:
    sae_rows(path)
    comparisons(path)


def sae_rows(path: str) -> None:
    """Every SAE on every eval corpus, and the CE baselines."""
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
    show("CE baselines shared by every SAE (nats per token)", base.unstack())


def comparisons(path: str) -> None:
    """The across-seed tables: family means, the matrix, gaps, and :func:`home_field`."""
    cfg, comp = run_config(path), load_comparisons(path)
    show("Across-seed means", family_table(comp.families, METRICS))
    show("Every family on every eval corpus (across-seed means)", family_matrix_table(
        comp.families, MATRIX, cfg.train_corpora, cfg.eval_corpora))
    show("Gaps at each target L0 (training corpus minus versus)",
         gap_table(comp.gaps, METRICS, by=PAIR))
    show("Gaps at matched FVE", gap_table(comp.gaps, MATCHED, basis="fve", by=PAIR,
                                          dropped=True))
    if (comp.gaps.basis == "fve_typical").any():  # results schema 8 on
        show("Gaps at matched typical FVE (a report beside the claims, not judged)",
             gap_table(comp.gaps, TYPICAL_MATCHED, basis="fve_typical", by=PAIR,
                       dropped=True))
    show("Each side on its own held-out text, with its training-window dead fraction "
         "(mean over seeds, min-max)", own_text_table(
             comp.families, home_sides(cfg), training_dead_fractions(load_results(path))))
    home_field(cfg, comp)


def home_field(cfg: Config, comp: ComparisonTables) -> None:
    """Issue 30's tables: home advantages, contrasts and their verdicts, and the mixes."""
    sides = home_sides(cfg)
    for basis in ("l0_target", "fve"):
        show(f"Home advantage (own SAE minus another, on own text), basis {basis}",
             home_advantage_table(comp.gaps, sides, cfg.train_corpora, HOME, basis,
                                  dropped=basis != "l0_target"))
    domain, broad = domain_pair(cfg)
    for basis in ("l0_target", "fve"):
        show(f"Difference-in-differences (first's home advantage minus second's), basis "
             f"{basis}", contrast_table(comp.contrasts, "did", HOME, basis,
                                        dropped=basis != "l0_target"))
    show("Difference-in-differences verdicts", did_verdict_table(comp, domain, broad))
    placebos, controls = placebo_corpora(cfg), genre_controls(cfg)
    if placebos or controls:
        show(f"Home excess: ({domain} minus {broad} on {domain} text) minus (placebo minus "
             f"{broad} on placebo text); genre controls in the {broad} mix are not judged",
             home_excess_table(comp.contrasts, placebos, controls, MATRIX))
    if placebos:
        show("Placebo verdicts", placebo_verdict_table(comp, domain, broad, placebos))
    mixed = mixed_corpora(cfg, domain)
    if mixed:
        show(f"The paper's claims, {domain} SAE against the broad SAE and each mix",
             mixed_verdict_table(comp, domain, broad, mixed))
    for m in mixed:
        for basis, metrics in (("l0_target", HOME), ("fve", MATCHED),
                               ("fve_typical", TYPICAL_MATCHED)):
            if (comp.gaps.basis == basis).any():  # fve_typical: results schema 8 on
                show(f"{domain} minus {m.name} on {domain} text, basis {basis}",
                     pair_table(comp.gaps, domain, m.name, metrics, basis, domain,
                                dropped=basis != "l0_target"))
        show(f"What {m.name} gives up: {m.name} minus {broad} on {broad} text",
             pair_table(comp.gaps, m.name, broad, HOME, eval_corpus=broad))


def models(paths: list[str]) -> None:
    runs = [ModelRun(model_label(cfg), cfg, load_comparisons(path))
            for path in paths for cfg in [run_config(path)]]
    first, second = domain_pair(runs[0].cfg)
    print(verdict_table(runs, [c.key for c in CLAIMS], first, second).to_markdown())
    for r in runs:  # sensitivity checks are shown below, never counted here
        print(f"\n{r.label}: {support_count(verdicts_by_claim(r, first, second))}")
    show("Sensitivity checks (not claims, not counted)",
         verdict_table(runs, [c.key for c in SENSITIVITY_CHECKS], first, second))
    show("Difference-in-differences, per model", did_verdicts_by_model(runs, first, second))
    mixes = [m.name for m in mixed_corpora(runs[0].cfg, first)]
    if mixes:
        show(f"The paper's claims against each mix ({', '.join(mixes)}), per model",
             mixed_verdicts_by_model(runs, first))
    show("Home advantage (own SAE minus another, on own text), per model, at each target L0",
         pd.concat({r.label: home_advantage_table(r.comparisons.gaps, home_sides(r.cfg),
                                                  r.cfg.train_corpora, MATRIX)
                    for r in runs}, names=["model"]))
    for title, metrics, basis in (
            (f"{first} minus {second} on {first} text, per model, at each target L0",
             ["fve", "fve_typical", "delta_ce", "loss_recovered_mean",
              "dark_matter.r2_error_mean"], "l0_target"),
            ("... and at matched FVE", ["l0", "delta_ce", "dark_matter.r2_error_mean"],
             "fve"),
            ("... and at matched typical FVE (not judged)",
             ["fve", "l0", "delta_ce", "dark_matter.r2_error_mean"], "fve_typical")):
        if basis != "fve_typical" or any((r.comparisons.gaps.basis == basis).any()
                                         for r in runs):  # typical: results schema 8 on
            show(title, gap_table_by_model(runs, first, second, metrics, basis))


if __name__ == "__main__":
    if len(sys.argv) > 2:
        models(sys.argv[1:])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "runs/default/results.json")
