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
# # 5. Feature case studies (preliminary)
#
# ## Overview
# The paper's qualitative claim is that a domain SAE spends its latents on clinical
# concepts where a broad SAE spends them on frequent, generic tokens. The feature-analysis
# stage of this project is **not built yet**; this notebook shows what the existing
# artefacts already support, for the medical and the broad SAE at one target L0:
#
# - how often each latent fires on medical and on broad text (firing-density histograms);
# - the latents that fire far more on medical than on broad text, and the stored tokens
#   where they fire most strongly.
#
# What later work adds is listed at the end.

# %%
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display
from myst_nb import glue
from plotly.subplots import make_subplots

from sae_med.book import (
    CORPUS_COLORS,
    domain_pair,
    latent_stats,
    notebook_config,
    token_window,
    use_offline_plotly,
)
from sae_med.experiment import load_model_for, stage_cache, stage_train
from sae_med.models import pick_device
from sae_med.sae import JumpReLUSAE

# %% [markdown]
# ## Parameters
# `l0_target` picks the SAEs (0: the middle target of the config); `n_latents` how many
# latents to show.

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
l0_target = 0.0
n_latents = 5

# %%
use_offline_plotly()
cfg = notebook_config(config, overrides, run_name)
medical, broad = domain_pair(cfg)
targets = list(cfg.sae.l0_targets)
target = l0_target or targets[len(targets) // 2]
print(f"run {cfg.name!r}: {medical} and {broad} SAEs at target L0 {target:g}")

# %% [markdown]
# ## Compute
# The activation caches and trained SAEs come from the earlier stages (reused). Each SAE is
# run over each evaluation cache once, counting how often every latent fires and keeping
# the rows of its strongest activations.

# %%
caches = stage_cache(cfg, progress=False)
trained = stage_train(cfg, progress=False)
tokenizer = load_model_for(cfg).tokenizer
device = pick_device(cfg.model.device)
saes = {c: JumpReLUSAE.load(next(r.path for r in runs if r.l0_target == target), device=device)
        for c, runs in trained.items() if c in (medical, broad)}
evals = [c for c in (medical, broad) if (c, "eval") in caches]
stats = {(s, e): latent_stats(saes[s], caches[(e, "eval")]) for s in saes for e in evals}

# %% [markdown]
# ## Results
# ### Firing density
# Fraction of evaluation tokens on which each latent fires, on a log scale; latents that
# never fire (dead) cannot be drawn on it and are counted in the table.

# %%
fig = make_subplots(rows=1, cols=len(saes), shared_yaxes=True,
                    subplot_titles=[f"SAE trained on {s}" for s in saes])
summary = []
for i, s in enumerate(saes, start=1):
    for e in evals:
        d = stats[(s, e)].density.numpy()
        fig.add_trace(go.Histogram(x=np.log10(d[d > 0]), name=f"on {e} text", opacity=0.6,
                                   legendgroup=e, showlegend=i == 1, nbinsx=40,
                                   marker_color=CORPUS_COLORS.get(e)), row=1, col=i)
        summary.append({"SAE": s, "eval corpus": e, "latents": d.size,
                        "dead": int((d == 0).sum()), "dense (>10%)": int((d > 0.1).sum()),
                        "median density of live latents": float(np.median(d[d > 0]))
                        if (d > 0).any() else float("nan")})
    fig.update_xaxes(title_text="log10 firing density", row=1, col=i)
fig.update_yaxes(title_text="latents", row=1, col=1)
fig.update_layout(barmode="overlay", legend={"orientation": "h", "y": -0.25},
                  title=f"Latent firing densities (fraction of tokens), target L0 {target:g}")
fig.show()
display(pd.DataFrame(summary).round(5))

# %% [markdown]
# ### Latents specific to medical text
# For the medical SAE: the latents whose firing density on medical text is highest
# relative to broad text (ratio with one pseudo-firing added to each side), with the stored
# tokens where each fires most strongly. Peak token in «guillemets»; the context is the
# neighbouring *stored* tokens of the same document (BOS and padding were never cached).


# %%
def specific_latents(sae_corpus: str, n: int) -> pd.DataFrame:
    on_m, on_b = stats[(sae_corpus, medical)], stats[(sae_corpus, broad)]
    ratio = ((on_m.density * on_m.n_tokens + 1) / (on_m.n_tokens + 1)) / (
        (on_b.density * on_b.n_tokens + 1) / (on_b.n_tokens + 1))
    ratio[on_m.density == 0] = 0
    order = ratio.argsort(descending=True)[:n].tolist()
    info = caches[(medical, "eval")].token_info()
    rows = []
    for j in order:
        peaks = [tokenizer.decode([int(info[r, 0])]) for r in on_m.top_rows[j].tolist() if r >= 0]
        rows.append({"latent": j, f"density on {medical}": float(on_m.density[j]),
                     f"density on {broad}": float(on_b.density[j]),
                     "ratio": float(ratio[j]), "top tokens": " | ".join(peaks[:8])})
    return pd.DataFrame(rows)


if broad in evals and medical in evals:
    med_latents = specific_latents(medical, n_latents)
    display(med_latents.round(5))
    glue("n_medical_specific", int((med_latents.ratio > 2).sum()), display=False)
else:
    med_latents = pd.DataFrame()
    glue("n_medical_specific", 0, display=False)
    print("both corpora must be evaluation corpora for this comparison")

# %% [markdown]
# ### Top-activating contexts of the first few

# %%
if len(med_latents):
    info = caches[(medical, "eval")].token_info()
    on_m = stats[(medical, medical)]
    ctx_rows = []
    for j in med_latents.latent[:3]:
        for v, r in zip(on_m.top_values[j].tolist()[:5], on_m.top_rows[j].tolist()[:5],
                        strict=True):
            if r < 0:
                continue
            left, tok, right = token_window(tokenizer, info, r, left=20, right=5)
            ctx_rows.append({"latent": int(j), "activation": round(v, 3),
                             "context": f"{left}«{tok}»{right}"})
    with pd.option_context("display.max_colwidth", 200):
        display(pd.DataFrame(ctx_rows))

# %% [markdown]
# ### The broad SAE's most frequent latents on medical text, for contrast

# %%
if medical in evals:
    on_m = stats[(broad, medical)]
    info = caches[(medical, "eval")].token_info()
    order = on_m.density.argsort(descending=True)[:n_latents].tolist()
    display(pd.DataFrame([{
        "latent": j, f"density on {medical}": float(on_m.density[j]),
        "top tokens": " | ".join(tokenizer.decode([int(info[r, 0])])
                                 for r in on_m.top_rows[j].tolist()[:8] if r >= 0)}
        for j in order]).round(5))

# %% [markdown]
# ## Summary
# Densities and top tokens are the raw material of a feature study, not its conclusion.
#
# **What later work adds** (the features stage): labelling latents with the concept
# hierarchies that ship with the medical corpus (HPO term names, synonyms and parents;
# ICD-10-CM chapters and blocks), full-text top-activating windows rather than stored
# neighbours, logit-lens tokens, comparisons of matched latents across the two SAEs, and
# the automated interpretation of the next notebook.
