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
# # 3. Reconstruction fidelity
#
# ```{admonition} About this chapter
# - **Teaches:** the fidelity metrics (FVE, ΔCE, loss recovered against zero and mean
#   ablation); paired medical-minus-broad gaps with hierarchical bootstrap intervals; the
#   same comparison at the same target L0 and at matched FVE; what specialisation costs on
#   the other corpus.
# - **Before it:** chapter 0 (FVE and L0 where the truth is known) and chapter 2 (the
#   trained SAEs); what cross-entropy and a bootstrap interval are.
# - **Time, default config:** under a minute with the run made: the default's book build,
#   every stage already run, took 5 min 20 s for its eight notebooks, this one among those
#   that took 3–37 s (benchmarks/RESULTS.md, 2026-12-03). Scoring the SAEs itself, when
#   they are not scored yet, is the evaluate stage: 5 min 22 s for Gemma there.
# - **Time, smoke config:** about 40 s measured here with the smoke run present (39 s,
#   2026-12-06, this project's shared 2-core machine under load).
# - **Needs:** CPU only; no internet.
# ```
#
# ## Overview
# The paper's central claim: at the same width and sparsity, an SAE trained on medical text
# explains more of the variance of medical-text activations than one trained on broad text,
# and splicing its reconstruction into the model costs less loss. Every SAE is scored here
# with one pipeline on the same held-out tokens:
#
# - **FVE** (the paper's): 1 − Σⱼ Varₜ(xⱼ − x̂ⱼ) / Σⱼ Varₜ(xⱼ) over all evaluation tokens;
#   `fve_uncentered` is 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖². A pooled FVE can be decided by a few
#   tokens with a massive activation (‖x‖ several times the median, where an SAE that never
#   saw one extrapolates), so `fve_typical` repeats it without the tokens above
#   `eval.massive_norm_ratio` × the median ‖x‖ (`massive_tokens` counts them): a
#   sensitivity check of the FVE claim, judged the same way but never counted as a claim
#   (it was chosen after the data were seen).
# - **ΔCE** = CE(spliced) − CE(clean): next-token loss increase, in nats per token, when the
#   activation is replaced by the SAE's reconstruction at the hook.
# - **Loss recovered** = (CE_zero − CE_spliced) / (CE_zero − CE_clean).
#
# Error bars on per-SAE values are 95% bootstrap intervals over documents. Gaps between the
# families are across-seed means with a hierarchical bootstrap interval (seed replicates,
# then documents shared by both families), computed by `sae_med.measure.compare`.

# %%
import pandas as pd
from IPython.display import display
from myst_nb import glue

from sae_med.experiment import model_runs, stage_evaluate
from sae_med.measure.results import load_comparisons, load_results
from sae_med.report.claims import (
    dropped_sentence,
    gap_intervals,
    gaps_by_model,
    l0_trend,
    oriented_gaps,
    replication_sentences,
    step_intervals,
    verdict_table,
)
from sae_med.report.domain_report import (
    family_matrix_table,
    home_advantage_table,
    home_sides,
)
from sae_med.report.exercises import check, exercise_table
from sae_med.report.fidelity import (
    fidelity_values,
    home_advantage_sentence,
    own_text_baselines,
    paper_fve_gap,
    paper_table,
    targets_text,
    with_paper,
)
from sae_med.report.notebook import (
    cross_eval_figure,
    dce_bar_sentence,
    domain_pair,
    family_table,
    gap_by_model_figure,
    gap_sentence,
    gap_table,
    gap_table_by_model,
    metric_value,
    metric_vs_l0,
    setup_notebook,
    step_table,
    with_interval,
)

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""

# %%
cfg = setup_notebook(config, overrides, run_name)
medical, broad = domain_pair(cfg)
targets = list(cfg.sae.l0_targets)
print(f"run {cfg.name!r}: {medical} vs {broad} SAEs, width {cfg.sae.width}, "
      f"target L0s {targets}, evaluated on {list(cfg.eval_corpora)}")

# %% [markdown]
# ## Compute
# `stage_evaluate` trains whatever is missing, then scores every SAE on every evaluation
# corpus and writes `results.json`; `load_results` turns it into a tidy table (one row
# per SAE × evaluation corpus × metric, with value and 95% interval).

# %%
results_path = stage_evaluate(cfg, progress=False)
results = load_results(results_path)
comparisons = load_comparisons(results_path)
families = comparisons.families
# the across-seed means in the per-SAE table's shape (for metric_value and the figures)
results_mean = families[families.basis == "l0_target"]
print(f"{results_path}: {results.sae_id.nunique()} SAEs x {results.eval_corpus.nunique()} "
      f"corpora x {results.metric.nunique()} metrics")

# %% [markdown]
# ## Results
# ### FVE vs L0
# x is the L0 each family actually reaches on the evaluation corpus (log scale); colour is
# the training corpus, line style the evaluation corpus. Points are across-seed means,
# error bars their hierarchical 95% intervals (seed replicates, then documents).

# %%
metric_vs_l0(results_mean, "fve", "FVE (fraction of variance explained)",
             "FVE vs L0 on held-out text").show()

# %% [markdown]
# ### Spliced loss vs L0

# %%
metric_vs_l0(results_mean, "delta_ce", "ΔCE (nats per token, lower is better)",
             "CE increase when the reconstruction is spliced in").show()
metric_vs_l0(results_mean, "loss_recovered", "loss recovered (fraction)",
             "Loss recovered vs L0 (against zero ablation)").show()
metric_vs_l0(results_mean, "loss_recovered_mean", "loss recovered vs mean ablation",
             "Loss recovered vs L0 (against mean ablation: x → E[x])").show()

# %% [markdown]
# ### Does ΔCE fall as L0 rises? (paired steps)
# Each step is one family's across-seed mean at the next target L0 minus its mean at this
# one, on the same documents and the same seed draws, so document difficulty cancels: the
# families' own intervals above can overlap while the step between them is resolved. `*`
# marks a step whose 95% interval excludes 0; ΔCE falls with L0 when every step is below 0.

# %%
steps = comparisons.steps
display(step_table(steps, ["delta_ce", "fve"]))
dce_steps = step_intervals(steps, medical, medical, "delta_ce")
dce_steps_sentence = gap_sentence(
    dce_steps, f"ΔCE steps of the {medical} SAEs", f"on {medical} text, target L0 "
    + targets_text(targets, " → "), none="one target L0, no steps")
bar_sentence = dce_bar_sentence(families, steps, medical)
print(dce_steps_sentence, bar_sentence, sep="\n")
glue("dce_trend_medical", l0_trend(steps, medical, medical, "delta_ce"), display=False)
glue("dce_trend_broad", l0_trend(steps, broad, medical, "delta_ce"), display=False)
glue("dce_steps_medical", dce_steps_sentence, display=False)
glue("dce_bar_sentence", bar_sentence, display=False)

# %% [markdown]
# ### Cross-evaluation: trained on × evaluated on
# The 2 × 2 design: each SAE family on its own corpus and on the other one. A domain SAE
# should win on its domain and may lose on broad text; a broad SAE that lost on both would
# point at a training problem rather than a domain effect.

# %%
cross_eval_figure(results_mean, "fve", "FVE (fraction of variance explained)", targets).show()
cross_eval_figure(results_mean, "delta_ce", "ΔCE (nats per token)", targets).show()

# %% [markdown]
# ### Every SAE on every corpus
# One row per seed replicate: value and [95% interval over documents]; `dead_frac` and
# `dense_frac` are point values (latents that never fire, or fire on more than 10% of
# tokens, over the evaluation tokens). These dead fractions do not compare across sides: a
# broad SAE's latent that never fires on medical text may be alive on broad text; the
# own-text table below gives each SAE's dead fraction over its own training window.

# %%
display(with_interval(results, ["l0", "fve", "fve_typical", "massive_tokens",
                                 "fve_uncentered", "rel_bias", "ce_clean",
                                 "ce_spliced", "ce_zero", "ce_mean_ablation", "delta_ce",
                                 "loss_recovered", "loss_recovered_mean", "kl_score",
                                 "dead_frac", "dense_frac"]))

# %% [markdown]
# ### Seed replicates
# Each SAE family (training corpus × target L0) has `sae.seeds` replicates from
# independent initialisations and batch orders. Below: the across-seed mean with its 95%
# interval (hierarchical bootstrap: seed replicates, then documents) and each replicate's
# own value.

# %%
display(family_table(families, ["fve", "fve_typical", "delta_ce", "loss_recovered",
                                 "loss_recovered_mean"]))

# %% [markdown]
# ### Every family on every corpus, and each side's home advantage
# Across-seed means of every training corpus's SAEs on every evaluation corpus, then each
# side's *home advantage*: its own SAE minus another on its own held-out text (`*`: the
# 95% interval excludes 0; for ΔCE a negative value favours the home SAE). Every SAE wins
# at home; the medical SAE's win on medical text says something about the domain only if
# it is larger than the other side's win on its own text (the difference-in-differences of
# {doc}`09_domain_or_home_field`).

# %%
sides = home_sides(cfg)
family_means = family_matrix_table(families, ["fve", "fve_typical", "delta_ce",
                                              "loss_recovered"], cfg.train_corpora,
                                   cfg.eval_corpora)
display(family_means)
home_table = home_advantage_table(comparisons.gaps, sides, cfg.train_corpora,
                                  ["fve", "fve_typical", "delta_ce", "loss_recovered"])
display(home_table)
home_sentence = home_advantage_sentence(comparisons.gaps, sides, medical, broad)
print(home_sentence)
glue("family_means_all_corpora", family_means, display=False)
glue("home_advantage_fidelity", home_table, display=False)
glue("home_advantage_sentence", home_sentence[0].upper() + home_sentence[1:] + ".",
     display=False)

# %% [markdown]
# ### Each side on its own held-out text
# The equal baselines: a side's advantage at home means little if the other side's SAE is
# weak on its own text. Each side's SAEs on *their own* held-out text (across-seed mean
# [95% interval]; ΔCE in nats, lower is better) and the fraction of latents dead over the
# last `train.dead_window_tokens` of their training (mean over seeds, min–max), which,
# unlike the held-out dead fraction above, is counted on each SAE's own kind of text.

# %%
own_text = own_text_baselines(families, results, sides)
display(own_text)
glue("own_text_baselines", own_text, display=False)

# %% [markdown]
# ### Medical minus broad: paired gaps
# The claim itself. Each gap is the medical family's across-seed mean minus the broad
# family's, on the *same* documents; its 95% interval resamples seed replicates (per
# family) and then documents (one draw shared by both families: paired). `*` marks an
# interval that excludes 0. For ΔCE a negative gap favours the medical SAE.

# %%
med_gaps = oriented_gaps(comparisons.gaps, medical, broad)
display(gap_table(med_gaps, ["fve", "fve_typical", "delta_ce", "loss_recovered",
                             "loss_recovered_mean", "kl_score"]))
fve_ivs = gap_intervals(med_gaps, "fve", medical)
fve_sentence = gap_sentence(fve_ivs, f"FVE gap ({medical} minus {broad} SAE)",
                            f"on held-out {medical} text, by target L0")
print(fve_sentence)

# %% [markdown]
# ### Spliced loss at matched FVE
# A better reconstruction usually costs less loss, so a loss gap at the same L0 may only
# restate the FVE gap. Here each family's ΔCE and loss recovered are interpolated along
# its L0 sweep (per seed replicate, inside every bootstrap replicate) to the same FVE
# values, inside the FVE range both families cover. The last column counts the bootstrap
# replicates each row left out (a drawn sweep did not reach that FVE).

# %%
display(gap_table(med_gaps, ["l0", "delta_ce", "loss_recovered", "kl_score"], basis="fve",
                  dropped=True))
lr_l0 = gap_intervals(med_gaps, "loss_recovered", medical)
lr_fve = gap_intervals(med_gaps, "loss_recovered", medical, basis="fve")
lr_sentence = " ".join([
    gap_sentence(lr_l0, f"Loss-recovered gap ({medical} minus {broad} SAE)",
                 f"on {medical} text at the same target L0"),
    gap_sentence(lr_fve, "At matched FVE the gap is", "")])
print(lr_sentence)
loss_dropped = dropped_sentence(med_gaps, ["l0", "delta_ce", "loss_recovered"], medical)
print(loss_dropped)

glue("l0_targets", targets_text(targets), display=False)
glue("medical_corpus", medical, display=False)
glue("broad_corpus", broad, display=False)
glue("n_seeds", cfg.sae.seeds, display=False)
glue("fve_gap_sentence", fve_sentence, display=False)
glue("loss_gap_sentence", lr_sentence, display=False)
fidelity = fidelity_values(comparisons, results, med_gaps, targets, medical, broad,
                           cfg.eval.massive_norm_ratio)
for name, value in fidelity.items():
    glue(name, value, display=False)
glue("loss_matched_dropped", loss_dropped, display=False)
glue("loss_matched_table", gap_table(med_gaps, ["l0", "delta_ce", "loss_recovered"],
                                     basis="fve", dropped=True), display=False)

# %% [markdown]
# ### At matched typical FVE
# The same interpolation with the typical-token FVE (`fve_typical`) as the fidelity axis:
# a report beside the pooled axis, which no claim judges. The pooled FVE gap left at equal
# typical FVE is what the massive-activation tokens carry; a loss gap that shrinks here
# was partly a gap in typical-token fidelity.

# %%
typical_metrics = ["fve", "l0", "delta_ce", "loss_recovered"]
typical_matched = gap_table(med_gaps, typical_metrics, basis="fve_typical", dropped=True)
display(typical_matched)
typical_dropped = dropped_sentence(med_gaps, typical_metrics, medical, basis="fve_typical")
print(typical_dropped)
glue("typical_matched_table", typical_matched, display=False)
glue("typical_matched_dropped", typical_dropped, display=False)

# %% [markdown]
# ### Across model families
# The same experiment (corpora, grouped splits, recipe, seeds, target L0s, width 8 × d_model)
# on each model of the config's `replications`, so that a domain effect that is a property
# of one model shows up as a verdict that differs between models. Each model's gaps and
# verdicts are computed exactly as above, from its own run.

# %%
runs = model_runs(cfg, comparisons)  # this run's, loaded above
by_model = gaps_by_model(runs, medical, broad)
for metric, label in (("fve", "FVE gap"), ("delta_ce", "ΔCE gap (nats)")):
    gap_by_model_figure(by_model, metric, medical, label).show()
fidelity_verdicts = verdict_table(runs, ["fve", "fve_typical", "loss"], medical, broad)
display(fidelity_verdicts)
model_gap_table = gap_table_by_model(runs, medical, broad,
                                     ["fve", "fve_typical", "delta_ce", "loss_recovered"])
display(model_gap_table)
fidelity_replication = replication_sentences(runs, ["fve", "fve_typical", "loss"], medical,
                                             broad)
print(fidelity_replication)
glue("n_models", len(runs), display=False)
glue("models", "; ".join(r.label for r in runs), display=False)
glue("fidelity_verdicts_by_model", fidelity_verdicts, display=False)
glue("fidelity_gaps_by_model", model_gap_table, display=False)
glue("fidelity_replication", fidelity_replication, display=False)

# %% [markdown]
# ### The paper's numbers (reference, not ours)
# **Typed in from the paper** (O'Neill et al. 2025, Gemma-2-2B, width 16,384, layer 20,
# evaluated on clinical QA text): their medical SAE against the public Gemma Scope SAE
# (trained on broad web text, by a different recipe and scored by a different pipeline).
# Different model, data and budget from ours: compare the *direction and size* of the
# gap, not the values. ΔCE is computed here from their CE columns; loss recovered is only
# given as a range per family.

# %%
paper = paper_table()
paper_gap_min, paper_gap_max = paper_fve_gap(paper)
glue("paper_fve_gap_min", paper_gap_min, display=False)
glue("paper_fve_gap_max", paper_gap_max, display=False)
display(paper)

# %%
with_paper(metric_vs_l0(results_mean, "fve", "FVE (fraction of variance explained)",
                        "Ours (on medical text) beside the paper's Gemma-2-2B numbers",
                        eval_corpora=[medical]), paper).show()

# %% [markdown]
# ## Summary
# The paired gaps are this run's answer to the paper's question: an FVE gap whose interval
# lies above 0 on medical text means the medical SAE reconstructs medical activations
# better at the same sparsity, beyond seed and document noise; the gap on broad text shows
# what the specialisation costs; the loss gap at matched FVE says whether the loss
# advantage goes beyond the better reconstruction. The verdicts are published to the
# [results summary](../book/results.md).

# %% [markdown]
# ## Exercises
# Check an answer with `check(label, answer, ...)` (the objects each exercise names): it
# says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("03"))

# %% [markdown]
# ```{exercise} Read the gap at another target
# :label: ex-fidelity-target
# The summary speaks of all target L0s at once. Take the sparsest SAEs (the smallest
# target L0) and the densest (the largest): what are the medical-minus-broad gaps in FVE
# and ΔCE on held-out medical text, and which intervals exclude 0? Check with
# `check("ex-fidelity-target", {"gaps": {(target, metric): gap}, "exclude_zero": {(target,
# metric), ...}}, gaps=comparisons.gaps, medical=medical, broad=broad)`.
# ```
#
# ```{solution-start} ex-fidelity-target
# :class: dropdown
# ```
# Filter the paired gaps (`med_gaps`) by target; `excludes_zero` is the `*` of the table.

# %%
ends = med_gaps[(med_gaps.basis == "l0_target") & (med_gaps.eval_corpus == medical)
                & med_gaps.metric.isin(["fve", "delta_ce"])
                & med_gaps.l0_target.isin([min(targets), max(targets)])]
display(ends[["l0_target", "metric", "value", "low", "high", "excludes_zero"]].round(4))
display(check("ex-fidelity-target",
              {"gaps": {(r.l0_target, r.metric): r.value for r in ends.itertuples()},
               "exclude_zero": {(r.l0_target, r.metric) for r in ends.itertuples()
                                if r.excludes_zero}},
              gaps=comparisons.gaps, medical=medical, broad=broad).require())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} What does specialisation cost?
# :label: ex-fidelity-transfer
# From the cross-evaluation, compute for each family and target L0 how much FVE it loses
# when moved from its own training corpus to the other one. Which family transfers
# better? Check with `check("ex-fidelity-transfer", {"lost": {(train corpus, target):
# FVE lost}, "better": train corpus}, results_mean=results_mean, medical=medical,
# broad=broad)`.
# ```
#
# ```{solution-start} ex-fidelity-transfer
# :class: dropdown
# ```
# `metric_value` reads one across-seed mean from `results_mean`.

# %%
other = {medical: broad, broad: medical}
transfer = pd.DataFrame([
    {"SAE trained on": c, "target L0": t,
     "FVE on own corpus": metric_value(results_mean, "fve", c, c, t),
     "FVE on the other": metric_value(results_mean, "fve", c, other[c], t)}
    for c in (medical, broad) for t in targets])
transfer["FVE lost"] = transfer["FVE on own corpus"] - transfer["FVE on the other"]
display(transfer.round(4))
loss_by_family = transfer.groupby("SAE trained on")["FVE lost"].mean()
print(f"smaller mean loss on transfer: the {loss_by_family.idxmin()} SAE")
lost = {(r[0], r[1]): r[2] for r in transfer[["SAE trained on", "target L0", "FVE lost"]]
        .itertuples(index=False)}
display(check("ex-fidelity-transfer", {"lost": lost, "better": loss_by_family.idxmin()},
              results_mean=results_mean, medical=medical, broad=broad).require())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Why is loss recovered so close to 1?
# :label: ex-fidelity-baselines
# Loss recovered divides by the damage of zero ablation. Compare the two baselines: how
# many times larger is CE(zero) − CE(clean) than CE(mean ablation) − CE(clean) on each
# evaluation corpus? What does that do to "loss recovered" against "recovered vs mean"?
# Check the ratios with `check("ex-fidelity-baselines", {eval corpus: ratio},
# results_mean=results_mean)`.
# ```
#
# ```{solution-start} ex-fidelity-baselines
# :class: dropdown
# ```
# The baselines do not depend on the SAE, so any family's rows will do.

# %%
c0, t0 = medical, targets[0]
baselines = pd.DataFrame([
    {"eval corpus": ev,
     "zero-ablation damage": metric_value(results_mean, "ce_zero", c0, ev, t0)
     - metric_value(results_mean, "ce_clean", c0, ev, t0),
     "mean-ablation damage": metric_value(results_mean, "ce_mean_ablation", c0, ev, t0)
     - metric_value(results_mean, "ce_clean", c0, ev, t0),
     "loss recovered": metric_value(results_mean, "loss_recovered", c0, ev, t0),
     "recovered vs mean": metric_value(results_mean, "loss_recovered_mean", c0, ev, t0)}
    for ev in cfg.eval_corpora])
baselines["ratio"] = baselines["zero-ablation damage"] / baselines["mean-ablation damage"]
display(baselines.round(3))
display(check("ex-fidelity-baselines", dict(zip(baselines["eval corpus"], baselines.ratio,
                                                strict=True)),
              results_mean=results_mean).require())

# %% [markdown]
# A ratio well above 1 means the same ΔCE is a small fraction of the zero-ablation damage
# and a larger one of the mean-ablation damage, so "recovered vs mean" sits further from 1.
#
# ```{solution-end}
# ```
