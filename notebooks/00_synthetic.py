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
# # 0. An SAE on data whose features we know
#
# ```{admonition} About this chapter
# - **Teaches:** what a sparse autoencoder (SAE) is asked to find; how to read recovery,
#   FVE, L0, dead latents and absorption when the right answer is known.
# - **Before it:** vectors, dot products and cosine similarity; a first look at PyTorch
#   tensors. No earlier chapter.
# - **Time, default config:** about 26 s, training 5 s of it (measured here, 2026-12-06,
#   this project's shared 2-core machine under load). The data are the chapter's own, the
#   same size whatever the config.
# - **Time, smoke config:** about 20 s, training 3–4 s of it (measured the same way).
# - **Needs:** CPU only; no internet, no language model.
# ```
#
# ## Overview
# A language model's activation is, so the SAE hypothesis goes, a sparse sum of
# *feature* directions: on any one token only a few features are active, each adding its
# direction times a magnitude. An SAE tries to find those directions from activations
# alone. On a real model nobody knows the true features, so every later chapter judges SAEs
# by proxies. Here we *plant* the features ourselves — unit directions, firing frequencies,
# magnitudes, some pairs that fire together and some parent/child pairs where the child
# only fires with its parent — train the project's own SAE on the activations, and compare
# what it learned with the truth:
#
# - **recovery**: for each planted direction, the best cosine with any decoder row;
#   ≥ 0.9 counts as recovered;
# - **FVE** (fraction of variance explained) and **L0** (active latents per row), the two
#   numbers every later chapter trades off;
# - **dead latents**: latents that never fire;
# - **absorption**: a child latent that fires *instead of* its parent's latent, so the
#   parent latent misses exactly the rows where the child is on.

# %%
from IPython.display import display

from sae_med.experiment import recipe_config, train_synthetic
from sae_med.interpret.synthetic import (
    SyntheticSpec,
    absorption_table,
    plant,
    recovery,
    sample,
    score_sae,
    synthetic_config,
    truth_sae,
)
from sae_med.report.exercises import check, exercise_table
from sae_med.report.notebook import setup_notebook
from sae_med.report.planted import (
    absorption_comparison,
    data_table,
    frequency_figure,
    planted_table,
    recovery_by_role,
    recovery_figure,
    recovery_table,
    score_table,
)

# %% [markdown]
# ## Parameters
# `config` supplies the seed, the device and the run folder; `recipe` is the config whose
# SAE and training recipe (learning rate, warmups, threshold initialisation) the chapter
# uses: the default experiment's, since the smoke config's is tuned for its 80 steps on
# model activations and this chapter trains for about 400. The `sae.` and `train.` ones
# among `overrides` apply to the recipe too. The rest sizes the synthetic data and the SAE.

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
recipe = "configs/default.yaml"
d_model = 64
n_features = 48
n_rows = 32768
width = 128
l0_target = 2.0
n_tokens = 200000

# %%
cfg = setup_notebook(config, overrides, run_name)
recipe_cfg = recipe_config(recipe, overrides)
spec = SyntheticSpec(d_model=d_model, n_features=n_features, seed=cfg.seed)
truth = plant(spec)
train_rows = sample(truth, n_rows, seed=0)
test = sample(truth, n_rows // 4, seed=1)  # held-out rows for every score below
display(data_table(truth, n_rows, test))

# %% [markdown]
# ### What was planted
# Each feature's firing frequency. Parents and children come first (a child's frequency
# is its parent's times P(child | parent)), then the correlated pairs, then independent
# features.

# %%
planted = planted_table(truth)
frequency_figure(planted).show()

# %% [markdown]
# ## Compute
# `train_synthetic` hands the rows to the package's trainer (`sae_med.train.sweep.train_saes`,
# the one every SAE in this book goes through) as an in-memory batch source; a finished
# run with the same key (config and rows) is reused.

# %%
syn_cfg = synthetic_config(cfg, width=width, l0_targets=(l0_target,), n_tokens=n_tokens,
                           recipe=recipe_cfg)
[sae] = train_synthetic(syn_cfg, train_rows, cfg.run_path / "synthetic")
oracle = truth_sae(truth)  # the SAE that knows the answer: a reference point

# %% [markdown]
# ## Results
# ### Scores against the truth
# The truth SAE has one latent per planted feature; its FVE falls short of 1 only by the
# noise, and its L0 is the true L0. A trained SAE that recovers most features at an L0
# near the truth's has found the planted dictionary.

# %%
scores = score_table({f"trained (width {width}, target L0 {l0_target:g})":
                          score_sae(sae, truth, test),
                      "truth SAE": score_sae(oracle, truth, test)})
display(scores.round(3))

# %% [markdown]
# ### Which planted features were recovered
# Each planted feature's best decoder cosine, by role. Features that fire rarely get
# fewer training rows; children and correlated pairs are harder than independent ones.
# `split` counts features that more than one latent reaches at 0.9: a feature split
# across latents (or duplicated). Rerun with a wider SAE (`width = 512`) to look for
# splits, or with `l0_target` well above the true L0 to see what an SAE does with
# sparsity it does not need.

# %%
rec = recovery(sae.W_dec, truth)
recovered = recovery_table(planted, rec)
recovery_figure(recovered, rec.at).show()
display(recovery_by_role(recovered, rec.at).round(3))

# %% [markdown]
# ### Absorption of children into parents
# `sae_med.interpret.features.absorption` (the measure chapter 5 runs on the HPO hierarchy) with
# every row a document and every planted parent a concept: the parent latent is the one
# that best separates the parent's rows; its *absorption rate* is the share of the
# parent's held-out rows where it stays silent while a latent specific to the parent fires
# instead. `child_share` is the share of the parent's rows where the child is on: what the
# absorption rate would be had the child's latent absorbed the parent completely. The
# truth SAE built to absorb every child shows that ceiling is measured.

# %%
absorbed = truth_sae(truth, absorbed=truth.hierarchy)
display(absorption_comparison({
    "trained": absorption_table(sae, truth, test),
    "truth SAE, children absorbing": absorption_table(absorbed, truth, test)}).round(3))

# %% [markdown]
# ## Summary
# On data with a known answer the project's SAE and trainer find most planted directions
# at about the true L0, and the same metrics the book uses on a real model (FVE, L0, dead
# latents, absorption) read as they should against the truth SAE. On a real model there is
# no truth SAE: the later chapters compare two SAEs with each other instead.

# %% [markdown]
# ## Exercises
# Each exercise has a check: pass your answer to `check(label, answer, ...)` with the
# objects it names, and it says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("00"))

# %% [markdown]
# ```{exercise} Move the recovery bar
# :label: ex-syn-bar
# How many planted features reach a best decoder cosine of at least 0.8 in the trained
# SAE? Check with `check("ex-syn-bar", answer, sae=sae, truth=truth)`.
# ```
#
# ```{solution-start} ex-syn-bar
# :class: dropdown
# ```
# `recovery` takes the bar as `at`; count the planted features that pass it.

# %%
answer = int(recovery(sae.W_dec, truth, at=0.8).recovered.sum())
print(f"{answer} of {n_features} planted features at cosine >= 0.8 "
      f"({int(rec.recovered.sum())} at 0.9)")
check("ex-syn-bar", answer, sae=sae, truth=truth).require()

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Absorb on purpose
# :label: ex-syn-absorb
# Build the truth SAE in which the first child absorbs its parent,
# `truth_sae(truth, absorbed=truth.hierarchy[:1])`, and measure the first parent's
# absorption rate on `test`. Before you run it: which number in the tables above should it
# be close to? Check with `check("ex-syn-absorb", answer, truth=truth, batch=test)`.
# ```
#
# ```{solution-start} ex-syn-absorb
# :class: dropdown
# ```
# The parent latent is silent exactly where the child fires, so the rate is the parent's
# held-out child share.

# %%
one = absorption_table(truth_sae(truth, absorbed=truth.hierarchy[:1]), truth, test)
first = one.iloc[0]
print(f"{first.parent}: absorption rate {first.absorption_rate:.3f}, "
      f"child share {first.child_share:.3f}")
check("ex-syn-absorb", float(first.absorption_rate), truth=truth, batch=test).require()

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Superposition
# :label: ex-syn-superposition
# Plant twice as many features as dimensions (`n_features = 2 * d_model`, the rest of
# `spec` unchanged) and score the truth SAE on `sample(truth, n_rows, seed=1)`. What is
# its FVE, and why is it no longer close to 1? Check with
# `check("ex-syn-superposition", answer, spec=spec, n_rows=n_rows)`.
# ```
#
# ```{solution-start} ex-syn-superposition
# :class: dropdown
# ```
# With more directions than dimensions they cannot all be orthogonal: the truth SAE's
# encoder (a pseudo-inverse) reads every feature with interference from the others, so
# latents fire where they should not and miss where they should.

# %%
import dataclasses  # noqa: E402

wide = plant(dataclasses.replace(spec, n_features=2 * d_model))
wide_score = score_sae(truth_sae(wide), wide, sample(wide, n_rows, seed=1))
print(f"truth SAE with {2 * d_model} features in {d_model} dimensions: "
      f"FVE {wide_score.fve:.3f}, L0 {wide_score.l0:.2f}")
check("ex-syn-superposition", wide_score.fve, spec=spec, n_rows=n_rows).require()

# %% [markdown]
# ```{solution-end}
# ```
