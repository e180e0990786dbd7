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
# # 2. Training the SAEs
#
# ```{admonition} About this chapter
# - **Teaches:** the JumpReLU SAE recipe (target-L0 sparsity term, warmups, one input
#   scale); reading training curves of loss, L0, FVE and dead latents; seed replicates; when
#   a finished SAE is reused.
# - **Before it:** chapter 0 (an SAE, L0, FVE, dead latents on data with a known answer) and
#   chapter 1 (the activation caches it trains on).
# - **Time, default config:** the last measured run trained Gemma's six sweeps (medical and
#   broad × 3 seeds, 3 targets each) from nothing in 13 min 6 s (benchmarks/RESULTS.md,
#   2026-12-03, 2 cores); the default has since added mixed_10's three sweeps, not yet
#   timed. Seconds when the SAEs are trained.
# - **Time, smoke config:** about 35 s measured here with the smoke run's SAEs present
#   (2026-12-06, this project's shared 2-core machine under load).
# - **Needs:** CPU only (a GPU is used when there is one); no internet.
# ```
#
# ## Overview
# One JumpReLU SAE is trained per training corpus (medical, broad) and per target L0, with
# the same recipe, width and token budget on both sides: the only difference between a
# medical and a broad SAE is the text its activations came from. `sae.seeds` replicates of
# each are trained from independent initialisations and batch orders (seed derived from
# corpus, target and replicate), so later notebooks can tell a corpus effect from seed
# noise. Each SAE logs its loss,
# L0, fraction of variance explained (FVE, per training batch) and dead-latent fraction
# to `metrics.jsonl`; this notebook plots those curves.

# %%
import pandas as pd
from IPython.display import display
from myst_nb import glue

from sae_med.experiment import stage_train
from sae_med.report.exercises import check, exercise_table
from sae_med.report.notebook import setup_notebook, training_curves
from sae_med.report.training import final_metrics_table, training_curve_figure

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""

# %%
cfg = setup_notebook(config, overrides, run_name)
display(pd.Series({
    "train corpora": ", ".join(cfg.train_corpora), "width (latents)": cfg.sae.width,
    "target L0s": ", ".join(f"{t:g}" for t in cfg.sae.l0_targets),
    "training tokens per SAE": f"{cfg.train.n_tokens:,}", "batch (tokens)": cfg.train.batch_size,
    "lr": cfg.train.lr, "sparsity loss": cfg.train.sparsity,
}, name=cfg.name).to_frame())

# %% [markdown]
# ## Compute
# `stage_train` trains the sweep for each corpus, or reuses a finished run whose
# checkpoint key (config + activation cache) matches.

# %%
results = stage_train(cfg, progress=False)
curves = training_curves(results)

# %% [markdown]
# ## Results
# ### Training curves
# Solid lines: the smallest target L0; dashed and dotted: larger targets. The sparsity
# term pushes each SAE's L0 to its target; FVE is measured on the training batch itself.

# %%
training_curve_figure(curves, cfg.sae.l0_targets).show()

# %% [markdown]
# ### Final training metrics
# The last logged row of each SAE (training-batch values; held-out scores are in the next
# notebook).

# %%
final = final_metrics_table(results)
glue("train_tokens_per_sae", int(final.tokens.max()), display=False)
display(final.round(4))

# %% [markdown]
# ## Summary
# Both SAE families were trained with one recipe on the same number of tokens. Where the
# final L0 sits close to its target and the dead fraction is low, the comparison in the
# next notebooks is between equally sparse, equally healthy dictionaries.

# %% [markdown]
# ## Exercises
# Check an answer with `check(label, answer, ...)` (the objects each exercise names): it
# says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("02"))

# %% [markdown]
# ```{exercise} Did each SAE reach its target?
# :label: ex-train-target
# The sparsity term steers each SAE's L0 towards its target. From the final metrics, find
# the SAE whose L0 ends furthest from its target (as a ratio) and say which way it missed.
# Then find when training settled: the first logged token count after which L0 stays
# within 10% of its final value. Check with
# `check("ex-train-target", answer, final=final, curves=curves)`.
# ```
#
# ```{solution-start} ex-train-target
# :class: dropdown
# ```
# Both answers come from the tables this notebook already loaded (`final` and `curves`).

# %%
reached = final.assign(ratio=final.l0 / final["target L0"])
worst = reached.loc[(reached.ratio - 1).abs().idxmax()]
print(f"furthest from its target: {worst['train corpus']} SAE, target {worst['target L0']:g}, "
      f"final L0 {worst.l0:.1f} ({'above' if worst.ratio > 1 else 'below'} it, "
      f"ratio {worst.ratio:.2f})")


def settled_at(g: pd.DataFrame, tol: float = 0.1) -> int:
    """First logged token count after which L0 stays within ``tol`` of its last value."""
    off = ((g.l0 - g.l0.iloc[-1]).abs() > tol * g.l0.iloc[-1]).to_numpy()
    last_off = off.nonzero()[0].max() if off.any() else -1
    return int(g.tokens.iloc[min(last_off + 1, len(g) - 1)])


keys = {"train_corpus": "train corpus", "l0_target": "target L0",
        "replicate": "seed replicate"}
settle = (curves.groupby(list(keys)).apply(settled_at, include_groups=False)
          .rename("L0 settled after (tokens)").reset_index().rename(columns=keys))
settle["share of the run"] = settle["L0 settled after (tokens)"] / final.tokens.max()
display(reached.merge(settle, on=list(keys.values())).round(3))
answer = {"sae": (worst["train corpus"], worst["target L0"], worst["seed replicate"]),
          "direction": "above" if worst.ratio > 1 else "below",
          "settled": {(r["train corpus"], r["target L0"], r["seed replicate"]):
                      r["L0 settled after (tokens)"] for _, r in settle.iterrows()}}
check("ex-train-target", answer, final=final, curves=curves).require()

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Train on a third corpus
# :label: ex-train-third
# `wordnet` glosses are short definitions like the ontology text, but not medical; they are
# part of the `broad` mix, so not a genre-matched placebo (`configs/domains.yaml`'s placebo
# domains of the same genre are `go`, Gene Ontology definitions, and `foldoc`, a computing
# dictionary). Add `wordnet` as a third
# training corpus (`train_corpora=[..., wordnet]`). Which SAEs would the rerun train, and
# which would it reuse? Check the set it would train with
# `check("ex-train-third", answer, cfg_third=cfg_third)`.
# ```
#
# ```{solution-start} ex-train-third
# :class: dropdown
# ```
# A finished SAE is reused when its checkpoint key matches; the key covers the seed, the
# SAE and training settings, the activation cache, the training corpus and the replicate,
# not the list of corpora. So only the new corpus's SAEs are trained: the folders that do
# not exist yet.

# %%
from sae_med.layout import sae_dirs  # noqa: E402
from sae_med.report.parameters import notebook_config  # noqa: E402

third = "wordnet" if "wordnet" not in cfg.train_corpora else "austen"
cfg_third = notebook_config(
    config, [*overrides, f"train_corpora=[{','.join([*cfg.train_corpora, third])}]"], run_name)
print(f"sae-med book {config} {' '.join(overrides)} "
      f"train_corpora=[{','.join(cfg_third.train_corpora)}]")
display(pd.DataFrame([{"SAE": sae, "folder": str(path),
                       "rerun": "reused" if (path / "cfg.json").exists() else "trained"}
                      for sae, path in sae_dirs(cfg_third).items()]))
to_train = {sae for sae, path in sae_dirs(cfg_third).items()
            if not (path / "cfg.json").exists()}
check("ex-train-third", to_train, cfg_third=cfg_third).require()

# %% [markdown]
# ```{solution-end}
# ```
