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
import plotly.graph_objects as go
from IPython.display import display
from myst_nb import glue
from plotly.subplots import make_subplots

from sae_med.experiment import stage_train
from sae_med.notebook import CORPUS_COLORS, setup_notebook, training_curves

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
panels = [("loss", "training loss (MSE + sparsity)"), ("l0", "L0 (active latents per token)"),
          ("fve", "FVE on the batch"), ("dead_frac", "dead latent fraction")]
fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in panels],
                    horizontal_spacing=0.1, vertical_spacing=0.15)
dashes = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
for (key, label), (r, c) in zip(panels, [(1, 1), (1, 2), (2, 1), (2, 2)], strict=True):
    for (corpus, target, rep), g in curves.groupby(["train_corpus", "l0_target", "replicate"],
                                                   sort=True):
        i = list(cfg.sae.l0_targets).index(target)
        fig.add_trace(go.Scatter(
            x=g.tokens, y=g[key], mode="lines",
            name=f"{corpus}, target L0 {target:g}, seed {rep}",
            legendgroup=f"{corpus}{target}", showlegend=(r, c) == (1, 1) and rep == 0,
            line={"color": CORPUS_COLORS.get(corpus), "dash": dashes[i % len(dashes)]}),
            row=r, col=c)
    fig.update_xaxes(title_text="training tokens", row=r, col=c)
    fig.update_yaxes(title_text=label, row=r, col=c)
fig.update_yaxes(type="log", row=1, col=1)
fig.update_layout(height=750, legend={"orientation": "h", "y": -0.12})
fig.show()

# %% [markdown]
# ### Final training metrics
# The last logged row of each SAE (training-batch values; held-out scores are in the next
# notebook).

# %%
final = pd.DataFrame([{"train corpus": corpus, "target L0": r.l0_target,
                       "seed replicate": r.replicate, **r.final}
                      for corpus, runs in results.items() for r in runs])
cols = ["train corpus", "target L0", "seed replicate", "tokens", "loss", "mse", "l0", "fve",
        "dead_frac"]
final = final[[c for c in cols if c in final.columns]]
glue("train_tokens_per_sae", int(final.tokens.max()), display=False)
display(final.round(4))

# %% [markdown]
# ## Summary
# Both SAE families were trained with one recipe on the same number of tokens. Where the
# final L0 sits close to its target and the dead fraction is low, the comparison in the
# next notebooks is between equally sparse, equally healthy dictionaries.
