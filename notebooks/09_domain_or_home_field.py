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
# # 9. Domain or home field?
#
# ```{admonition} About this chapter
# - **Teaches:** why a domain SAE that wins on its own text may only be at home there;
#   each side's home advantage, the train × eval matrix with placebo domains, an SAE that
#   has seen the domain in its mix, the difference-in-differences as a declared claim, and
#   three diagnostics of what the broad SAE lacks.
# - **Before it:** chapters 3 and 4 (paired gaps, matched FVE, the claims and their
#   verdicts) and chapter 2 (the training corpora); what a placebo control is.
# - **Time, default config:** not yet timed with the run made (the homefield diagnostics
#   score the default's SAEs once, then reuse). It reads three runs of their own when
#   present: the domains run (`sae-med run configs/domains.yaml`: about 52 min from nothing
#   on 2 cores, benchmarks/RESULTS.md, 2026-12-06), the random-weights control
#   (`sae-med run configs/random_weights.yaml`) and the 50% mix
#   (`sae-med run configs/mixed_50.yaml`); and the replications' runs that chapter 3 made.
# - **Time, smoke config:** about 25 s measured here with the smoke run present (26 s in
#   a book build, 25 s alone; 2026-12-06, this project's shared 2-core machine under
#   load).
# - **Needs:** CPU only; no internet.
# ```
#
# ## Overview
# Every SAE wins on its own text. The broad SAE has never seen a medical document, so a
# medical SAE that beats it on medical text may only be at home there: pure distribution
# shift predicts the same gap as the paper's thesis, which is about *capacity* (a general
# SAE that has seen the domain spends its latents on generic features, so a domain SAE of
# the same size reconstructs the domain better). This chapter puts the experiment's
# answers side by side:
#
# 1. **Home advantage of each side**: own SAE minus the other on own text. Pure home field
#    predicts similar advantages on both sides.
# 2. **The train × eval matrix** (`configs/domains.yaml`: an SAE per corpus, placebo
#    definition domains of the same genre included, each scored on every corpus).
# 3. **Medical vs mixed**: the paper's claims judged against an SAE of the same size that
#    saw medical text in its mix (`mixed_10`: the broad mix with medical text at 10% of
#    its tokens), at matched L0 and matched FVE, and what that SAE gives up on broad text.
# 4. **Difference-in-differences**: (medical − broad SAE on medical text) − (broad −
#    medical SAE on broad text), declared as a claim before the run that judges it
#    (`sae_med.report.claims.DID_CLAIMS`); and the *home excess* over each placebo domain of the
#    domains run: (medical − broad on medical text) − (placebo − broad on placebo text).
# 5. **What the broad SAE lacks**: how much of the gap a shift of the broad SAE to the
#    medical mean closes, how much survives on novel documents, and how it varies with a
#    token's frequency in one training cache against the other.
# 6. **Weights that learned nothing**: each side's home advantage on the same model with
#    every weight redrawn, against the trained model's.
#
# Every interval is the paired hierarchical 95% bootstrap of `sae_med.measure.compare` (seed
# replicates, then document groups); a contrast's two texts are different documents,
# resampled independently, with each training corpus's seed draws shared by both. The
# verdicts and the sentence at the end are computed by `sae_med.report.domain_report` and
# `sae_med.report.claims`, never typed.

# %%
from IPython.display import display
from myst_nb import glue

from sae_med.experiment import homefield_report, reported_run
from sae_med.measure.results import load_comparisons
from sae_med.report.claims import oriented_gaps
from sae_med.report.domain_report import (
    MATRIX_METRICS,
    MIXED_50_CONFIG,
    contrast_table,
    did_verdict_table,
    did_verdicts_by_model,
    domains_results_path,
    family_matrix_table,
    genre_controls,
    home_advantage_figure,
    home_advantage_table,
    home_advantages,
    home_excess_table,
    home_matrix_figures,
    home_sides,
    load_domains_run,
    load_mixed_50_run,
    load_side_run,
    matching_domains_run,
    matrix_figures,
    mix_cost_tables,
    mixed_corpora,
    mixed_gap_tables,
    mixed_verdict_table,
    mixed_verdicts_by_model,
    page_verdicts,
    placebo_corpora,
    placebo_verdict_table,
    read_model_runs,
    side_mixed_verdict_table,
)
from sae_med.report.exercises import check, exercise_table
from sae_med.report.notebook import domain_pair, setup_notebook
from sae_med.report.random_weights import (
    RANDOM_WEIGHTS_COMMAND,
    RANDOM_WEIGHTS_CONFIG,
    control_rows,
    control_table,
    control_verdicts,
    model_vocab_size,
    replication_controls,
)

# %% [markdown]
# ## Parameters
# `results_file` reports a results.json made elsewhere instead of this config's run;
# `domains_results` is the domains run's results.json (default: where
# `configs/domains.yaml` writes it), `random_results` the random-weights control's (default:
# where `configs/random_weights.yaml` writes it), `mixed_50_results` the 50% mix's run
# (default: where `configs/mixed_50.yaml` writes it). All are read, never run here: each
# trains SAE families of its own.

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
results_file = ""
domains_results = ""
random_results = ""
mixed_50_results = ""

# %%
cfg, results_path = reported_run(setup_notebook(config, overrides, run_name), results_file)
comparisons = load_comparisons(results_path)
medical, broad = domain_pair(cfg)
sides, mixed = home_sides(cfg), mixed_corpora(cfg, medical)
domains_status = matching_domains_run(
    load_domains_run(domains_results or domains_results_path()), medical, broad)
domains = domains_status.run
print(f"run: {results_path} (trained on {', '.join(cfg.train_corpora)}; scored on "
      f"{', '.join(cfg.eval_corpora)})")
print(domains_status.note)

# %% [markdown]
# ## Results
# ### Each side's home advantage
# Own SAE minus another on held-out own text, at each target L0 (`*`: the 95% interval
# excludes 0). For ΔCE a *negative* value is an advantage (the own SAE costs the model
# less).

# %%
home = home_advantages(comparisons.gaps, sides, cfg.train_corpora)
display(home_advantage_table(comparisons.gaps, sides, cfg.train_corpora))
home_advantage_figure(home, "fve_typical", "typical-token FVE").show()
home_advantage_figure(home, "delta_ce", "ΔCE (nats)").show()

# %% [markdown]
# ### The train × eval matrix
# Family means (across seed replicates) of each SAE on each corpus's held-out text, with
# their 95% intervals, from the domains run; home cells are outlined. A domain is special
# if its column's home cell stands out more than the placebo domains' do.

# %%
if domains is None:
    print(domains_status.note)
else:
    dcfg = domains.cfg
    for fig in matrix_figures(domains.comparisons.families, dcfg.train_corpora,
                              dcfg.eval_corpora):
        fig.show()
    display(family_matrix_table(domains.comparisons.families, list(MATRIX_METRICS),
                                dcfg.train_corpora, dcfg.eval_corpora))

# %% [markdown]
# The same matrix as home advantages: each column's own SAE minus the row's SAE on that
# column's text (paired gaps with their intervals). Columns whose cells are all about as
# large are corpora that win at home by the same margin, whatever their subject.

# %%
if domains is not None:
    for fig in home_matrix_figures(domains.comparisons.gaps, home_sides(dcfg),
                                   dcfg.train_corpora, dcfg.eval_corpora):
        fig.show()

# %% [markdown]
# ### Medical vs an SAE that has seen medicine
# The paper's claims judged the same way (every target L0, and matched FVE where the claim
# asks for it), once against the broad SAE and once against each mix; then the gaps
# themselves, at the same target L0, at matched FVE and at matched typical FVE (with the
# share of bootstrap replicates each matched row left out: those whose sweeps do not
# reach the grid point).

# %%
display(mixed_verdict_table(comparisons, medical, broad, mixed))
for t in mixed_gap_tables(comparisons.gaps, medical, mixed):
    print(t.caption)
    display(t.table)

# %% [markdown]
# The other declared share, medical at 50% of the mix's tokens, is a run of its own
# (`configs/mixed_50.yaml`: the default with `mixed_50` instead of `mixed_10`, read, never
# run here): the same claims against an SAE that saw far more of the domain, and the gaps.

# %%
mixed_50_status = load_mixed_50_run(mixed_50_results or domains_results_path(MIXED_50_CONFIG))
print(mixed_50_status.note)
mixed_50_verdicts = side_mixed_verdict_table(mixed_50_status, medical, broad)
display(mixed_50_verdicts)
if mixed_50_status.run is not None:
    for t in mixed_gap_tables(mixed_50_status.run.comparisons.gaps, medical,
                              mixed_corpora(mixed_50_status.run.cfg, medical)):
        print(t.caption)
        display(t.table)

# %% [markdown]
# What the mix gives up on broad text: the mixed SAE minus the broad SAE on held-out
# broad text (negative FVE, positive ΔCE: it does worse there).

# %%
for table in mix_cost_tables(comparisons.gaps, broad, mixed):
    display(table)

# %% [markdown]
# ### Difference-in-differences
# The medical side's home advantage minus the broad side's, at each target L0 and at the
# matched-FVE grid points of equal rank on each text, with the verdicts of the declared
# claims.

# %%
did_metrics = ["fve_typical", "fve", "delta_ce", "loss_recovered",
               "dark_matter.r2_error_mean"]
display(contrast_table(comparisons.contrasts, "did", did_metrics))
display(contrast_table(comparisons.contrasts, "did", did_metrics, basis="fve", dropped=True))
display(did_verdict_table(comparisons, medical, broad))

# %% [markdown]
# The same verdicts, and the paper's claims against each mix, on every model of the
# config's `replications` whose run is on disk (read, never run here; chapter 3 evaluates
# them), each judged from its own run.

# %%
by_model = read_model_runs(cfg, comparisons)
did_by_model = did_verdicts_by_model(by_model.runs, medical, broad)
mixed_by_model = mixed_verdicts_by_model(by_model.runs, medical)
display(did_by_model, mixed_by_model)
print(by_model.note or f"Every model of this run: {', '.join(r.label for r in by_model.runs)}.")

# %% [markdown]
# ### Placebo domains
# Does medicine's home advantage over the broad SAE exceed that of another narrow corpus
# over the same broad SAE (`home_excess`, from the domains run)? Only corpora the broad SAE
# never saw are placebo domains (`go`, `foldoc`). The genre controls `wordnet` and `austen`
# are parts of the broad mix: the broad SAE trained on them, so their home advantage over
# it is small by construction. Their rows are shown, labelled, and never judged.

# %%
placebos = placebo_corpora(domains.cfg) if domains is not None else []
controls = genre_controls(domains.cfg) if domains is not None else []
if domains is None:
    print(domains_status.note)
else:
    display(home_excess_table(domains.comparisons.contrasts, placebos, controls,
                              ["fve_typical", "delta_ce"]))
    display(placebo_verdict_table(domains.comparisons, medical, broad, placebos))

# %% [markdown]
# ### Weights that learned nothing
# The random-weights control (`configs/random_weights.yaml`, read, never run here): the
# same model architecture with every weight redrawn by its config's initialiser, the same
# corpora, recipe, seeds and target. If each side's home advantage is not detectably
# smaller there than on the trained model (the domains run, same target and seeds), the
# texts' token statistics suffice to give it, without what the model learned. The two runs
# are scored apart, so the ratio's interval treats them as independent (conservative;
# `sae_med.measure.controls`). Its SmolLM2 replication is set against this run's SmolLM2
# replication.

# %%
random_status = load_side_run(random_results or domains_results_path(RANDOM_WEIGHTS_CONFIG),
                              "random-weights", RANDOM_WEIGHTS_COMMAND)
control = (control_rows(random_status.run.comparisons, domains.comparisons, medical, broad,
                        vocab_size=model_vocab_size(random_status.run.cfg))
           if random_status.run is not None and domains is not None else None)
control_note = random_status.note if domains is not None else domains_status.note
if control is None:
    print(control_note)
else:
    display(control_table(control))
# the other model families: the config's replications, each against this run's own
# replication of the same model (read, never run)
for more in replication_controls(by_model.runs, medical, broad):
    print(f"{more.label}: {more.note}")
    if more.rows is not None:
        display(control_table(more.rows))

# %% [markdown]
# ### What the broad SAE lacks
# Three diagnostics that need no training (`sae_med.measure.homefield`, at the middle target L0):
# (a) the broad SAE *recentred* on the medical mean (its decoder bias shifted by
# E_med[x] − E_broad[x]): how much of the ΔCE gap a mean shift closes; (b) the gap on
# held-out documents with no one-word twin in the training split and few shared word
# 3-grams (*novel*), against the rest: how much of the advantage survives there; (c) the
# gap by each token's frequency ratio between the two training caches (ln, binned). Each
# is paired on documents with seed × document-group intervals like the gaps above. They
# need this config's SAEs and caches, so a `results_file` made elsewhere gets none.

# %%
if results_file:
    homefield_sentence = ("The diagnostics need this config's SAEs and caches: not computed "
                          "for a results file made elsewhere.")
else:
    homefield = homefield_report(cfg, progress=False)
    for frame in homefield.frames():
        display(frame.round(3))
    homefield_sentence = homefield.summary()
print(homefield_sentence)
glue("homefield_sentence", homefield_sentence, display=False)

# %% [markdown]
# ### The verdict
# One sentence per metric, computed from the intervals and verdicts above.

# %%
verdicts = page_verdicts(comparisons, medical, broad, mixed,
                         domains.comparisons if domains is not None else None, placebos,
                         controls)
print(verdicts["domain_verdict_sentence"], verdicts["domain_verdict_sentence_dce"],
      verdicts["mixed_cost_sentence"], sep="\n\n")
verdicts |= control_verdicts(control, medical, control_note)
for key, text in verdicts.items():
    glue(key, text, display=False)
glue("home_advantage_table", home_advantage_table(comparisons.gaps, sides,
                                                  cfg.train_corpora), display=False)
glue("did_table", contrast_table(comparisons.contrasts, "did", did_metrics), display=False)
glue("domains_run_note", domains_status.note, display=False)
glue("did_verdicts_by_model", did_by_model, display=False)
glue("mixed_verdicts_by_model", mixed_by_model, display=False)
glue("home_field_models_note", by_model.note, display=False)
glue("mixed_50_run_note", mixed_50_status.note, display=False)
glue("mixed_50_verdict_table", mixed_50_verdicts, display=False)

# %% [markdown]
# ## Summary
# If both sides win at home by about the same margin, the difference-in-differences
# interval includes 0 and the medical SAE's advantage is home field; if medicine's home
# advantage exceeds a placebo domain's and the medical SAE still beats an SAE that has
# seen medicine, the capacity reading gains ground. What remains confounded (corpus size
# and repetitiveness, genre, the mix's smaller dose of medical tokens) is listed on the
# [results summary](../book/results.md), which quotes the verdicts above.

# %% [markdown]
# ## Exercises
# Check an answer with `check(label, answer, ...)` (the objects each exercise names): it
# says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("09"))

# %% [markdown]
# ```{exercise} A difference-in-differences by hand
# :label: ex-home-did
# The difference-in-differences is the medical side's home advantage minus the broad
# side's. Compute it at each target L0 from the home-advantage rows (`home`) and check
# it against the contrast rows of typical-token FVE. Check your values with
# `check("ex-home-did", {target L0: value}, gaps=comparisons.gaps, medical=medical,
# broad=broad)`.
# ```
#
# ```{solution-start} ex-home-did
# :class: dropdown
# ```
# Point values subtract exactly; the intervals do not (the contrast's is bootstrapped).

# %%
sel = home[(home.metric == "fve_typical") & (home.basis == "l0_target")]
own = sel[(sel.train_corpus == medical) & (sel.versus == broad)].set_index("l0_target")
theirs = sel[(sel.train_corpus == broad) & (sel.versus == medical)].set_index("l0_target")
did = comparisons.contrasts
did = did[(did.kind == "did") & (did.metric == "fve_typical") & (did.basis == "l0_target")
          & (did["first"] == medical)].set_index("l0_target")
print((own.value - theirs.value).round(6).to_dict(), did.value.round(6).to_dict())
display(check("ex-home-did", (own.value - theirs.value).to_dict(), gaps=comparisons.gaps,
              medical=medical, broad=broad).require())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} How much of the gap does the mix close?
# :label: ex-home-mix
# At each target L0, what share of the medical SAE's typical-token FVE gap over the
# broad SAE on medical text remains against the mixed SAE? A share near 1 says seeing
# medicine at that dose bought the mixed SAE little; near 0, that it closed the gap.
# Check with `check("ex-home-mix", {(mixed corpus, target L0): share},
# gaps=comparisons.gaps, medical=medical, broad=broad, mixed=[m.name for m in mixed])`.
# ```
#
# ```{solution-start} ex-home-mix
# :class: dropdown
# ```
# Both gaps are paired on the same medical documents; their ratio of point values is a
# description, not an interval.

# %%
def gap_points(other: str):
    g = oriented_gaps(comparisons.gaps, medical, other)
    return g[(g.metric == "fve_typical") & (g.basis == "l0_target")
             & (g.eval_corpus == medical)].set_index("l0_target").value


shares = {}
for m in mixed:
    share = gap_points(m.name) / gap_points(broad)
    print(m.name, share.round(3).to_dict())
    shares |= {(m.name, t): v for t, v in share.items()}
display(check("ex-home-mix", shares, gaps=comparisons.gaps, medical=medical, broad=broad,
              mixed=[m.name for m in mixed]).require())

# %% [markdown]
# ```{solution-end}
# ```
