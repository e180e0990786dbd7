# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (sae-med)
#     language: python
#     name: sae-med
# ---

# %% [markdown]
# # 8. The learning curve: does the medical advantage survive real training?
#
# ```{admonition} About this chapter
# - **Teaches:** whether the gap between the two SAE families holds as training grows:
#   snapshots versus annealed runs per budget, across-seed intervals, grows / shrinks /
#   holds verdicts.
# - **Before it:** chapters 2 and 3 (training, the scores and their paired intervals); what
#   a learning-rate schedule is.
# - **Time, default config:** `configs/default.yaml` asks for no curve, so the notebook says
#   so in seconds; `configs/long.yaml` adds it: caching 2M tokens (~1.1k tok/s in bf16),
#   then 1 h 46 min (the 10M-token runs 63 min, the smaller budgets 28 min, scoring both
#   texts 15 min; benchmarks/RESULTS.md, 2026-12-08, AMD EPYC `avx512_bf16`, 2 cores).
# - **Time, smoke config:** about 30 s measured here with the smoke curve present (32 s,
#   2026-12-06, this project's shared 2-core machine under load); the first run here, which
#   redid part of the curve's work, took 204 s.
# - **Needs:** CPU only; no internet. The dead-latent remedy's section reads
#   `sae-med experiment configs/remedy_long.yaml`'s run when it is on disk (six 10M-token
#   runs on the curve's caches: about 70 min on that EPYC) and says how to make it when not.
# ```
#
# ## Overview
# The main run trains every SAE for about a thousand steps (600k tokens on the default),
# while the paper trains on 49M. Short runs could flatter either side: the domain SAE has
# less to learn, so it may simply converge first. Here each side trains at one target L0
# on a larger activation cache for much longer, saving snapshots on the way
# (`train.snapshot_tokens`), and every budget is scored like the main run: the same
# held-out documents, seed replicates with their own initialisations, and paired
# gaps whose intervals include seed variance. The config's `learning_curve` section
# describes the run (`sae_med.config.Config.learning_curve_config`).
#
# A gap *grows* or *shrinks* here only when its interval at the largest budget does not
# overlap its interval at the smallest; otherwise it *holds*. A budget can be had two
# ways. Snapshots of the long run cost nothing extra, but those before the last are taken
# before the learning-rate decay of the run's final fifth, so they are not annealed, and
# an un-annealed SAE costs the model far more when spliced in (ΔCE of nats, not monotone
# in tokens) while its FVE and dark matter rise smoothly. With `train.snapshots_annealed`
# (set in `configs/long.yaml`) each budget is a run of its own, decayed to its end, for
# the sum of the budgets in extra training, and every budget's ΔCE can be read. The
# summary below says which this run used.

# %%
from IPython.display import display
from myst_nb import glue

from sae_med.experiment import stage_learning_curve
from sae_med.report.claims import oriented_gaps
from sae_med.report.exercises import check, exercise_table
from sae_med.report.learning_curve import (
    claim_trends,
    curve_summary,
    curve_tables,
    seed_summary,
    trend_frame,
)
from sae_med.report.notebook import (
    curve_figure,
    curve_gap_figure,
    domain_pair,
    family_table,
    gap_table,
    setup_notebook,
)
from sae_med.report.side_by_side import remedy_pair, side_by_side_verdicts

# %% [markdown]
# ## Parameters

# %% [markdown]
# `remedy_results` is the dead-latent remedy's run (default: where
# `configs/remedy_long.yaml` writes it), read, never run here.

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
remedy_results = ""

# %%
cfg = setup_notebook(config, overrides, run_name)
curve_cfg = cfg.learning_curve_config()  # None: the config asks for no curve

# %% [markdown]
# ## Compute
# The curve run's caches and SAEs, then each budget's scores (all reused when present).

# %%
points = stage_learning_curve(curve_cfg, progress=False) if curve_cfg else []
if points:
    domain, broad = domain_pair(curve_cfg)
    tables = curve_tables(points)
    gaps = oriented_gaps(tables.gaps, domain, broad)
    dead = seed_summary(tables.rows, "dead_frac")
    trends = claim_trends(tables, domain, broad)
glue("curve_summary", curve_summary(curve_cfg, points, trends if points else []),
     display=False)

# %% [markdown]
# ## Results
# ### Each side as it trains
# FVE, FVE without massive-activation tokens, ΔCE when spliced in, and the measured L0
# (the sparsity each budget actually reached) on held-out text at each training budget;
# the last panel is the fraction of latents that never fire on the
# held-out text (mean over seeds, bars from the lowest to the highest seed).

# %%
if points:
    curve_figure(tables.families, dead, domain,
                 {"fve": "FVE", "fve_typical": "FVE, typical tokens",
                  "delta_ce": "ΔCE (nats)", "l0": "L0"}).show()
    display(family_table(tables.families[tables.families.eval_corpus == domain],
                         ["l0", "fve", "fve_typical", "delta_ce", "loss_recovered"],
                         by=["tokens"]))
    display(dead.round(4))

# %% [markdown]
# ### The gaps, medical minus broad
# Paired over the same documents and seeds; `*` marks an interval that excludes 0.

# %%
if points:
    curve_gap_figure(gaps, domain, {"fve": "FVE gap", "fve_typical": "FVE gap, typical tokens",
                                    "delta_ce": "ΔCE gap (nats)",
                                    "dark_matter.r2_error_mean": "R²(e) gap"}).show()
    display(gap_table(gaps[gaps.eval_corpus == domain],
                      ["fve", "fve_typical", "delta_ce", "loss_recovered",
                       "dark_matter.r2_error_mean"], by=["tokens"]))

# %% [markdown]
# ### Verdicts
# Each claim's gap at the smallest and the largest budget, its verdict at the largest
# (at this one target L0: with a single target there is no matched-FVE comparison, so
# the FVE curves above are the fidelity context) and how the gap moved.

# %%
if points:
    display(trend_frame(trends, points[0].tokens, points[-1].tokens))

# %% [markdown]
# ### The dead-latent remedy at the longest budget
# Without a remedy many latents of both sides stop firing in training, and a broad SAE
# whose latents die may simply be a weaker baseline. `configs/remedy_long.yaml` trains
# both sides at this curve's longest budget with Anthropic's pre-activation loss on the
# latents dead over the last training window (`train.pre_act_loss`); its side without
# the remedy is the curve's own longest run (same caches, seeds and documents). Below,
# for each run: each side's home advantage (its own SAE minus the other on its own
# text), each side on its own held-out text with its training-window dead fraction, and
# the claims judged on each (the sensitivity check shown, never counted). Read, never
# run here.

# %%
remedy = remedy_pair(points, remedy_results)
print(remedy.note)
if remedy.pair is not None:
    display(remedy.pair.home)
    display(remedy.pair.own)
    display(side_by_side_verdicts(remedy.pair.runs))

# %% [markdown]
# ## Summary
# {glue:text}`curve_summary`

# %% [markdown]
# ## Exercises
# Check an answer with `check(label, answer, ...)` (the objects each exercise names): it
# says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("08"))

# %% [markdown]
# ```{exercise} Is the largest budget converged?
# :label: ex-curve-converged
# From the family table, how much did each side's FVE and ΔCE change between the last
# two budgets, relative to the change between the first two? What does that say about
# whether more tokens would move the gap? Check the ratios (last change ÷ first change)
# with `check("ex-curve-converged", {(train corpus, metric): ratio},
# families=tables.families, domain=domain)`.
# ```
#
# ```{solution-start} ex-curve-converged
# :class: dropdown
# ```
# The family rows carry each budget's across-seed mean; differencing consecutive budgets
# per side gives the change per budget step.

# %%
if points:
    fam = tables.families[(tables.families.eval_corpus == domain)
                          & tables.families.metric.isin(["fve", "delta_ce"])]
    steps = (fam.pivot_table(index=["train_corpus", "metric"], columns="tokens",
                             values="value").diff(axis=1).iloc[:, 1:])
    display(steps.round(4))
    ratios = (steps.iloc[:, -1] / steps.iloc[:, 0]).to_dict()
    display(check("ex-curve-converged", ratios, families=tables.families,
                  domain=domain).require())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Was every budget compared at the same sparsity?
# :label: ex-curve-l0
# The gaps are taken at one target L0, but each SAE's measured L0 can drift from it. For
# every budget, how far is each side's held-out L0 from the target, and do the two sides
# differ by more than their intervals? Check the distances (L0 / target − 1) with
# `check("ex-curve-l0", {(tokens, train corpus): distance}, families=tables.families,
# domain=domain)`.
# ```
#
# ```{solution-start} ex-curve-l0
# :class: dropdown
# ```
# The family rows of metric `l0` hold each side's across-seed mean with its interval.

# %%
if points:
    l0 = tables.families[(tables.families.eval_corpus == domain)
                         & (tables.families.metric == "l0")]
    display(l0.assign(off_target=l0.value / l0.l0_target - 1)
            .pivot_table(index="tokens", columns="train_corpus",
                         values=["value", "low", "high", "off_target"]).round(3))
    off = l0.value / l0.l0_target - 1
    display(check("ex-curve-l0", dict(zip(zip(l0.tokens, l0.train_corpus, strict=True), off,
                                          strict=True)), families=tables.families,
                  domain=domain).require())

# %% [markdown]
# ```{solution-end}
# ```
