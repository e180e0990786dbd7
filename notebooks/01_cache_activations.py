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
# # 1. Caching activations
#
# ## Overview
# Every SAE in this book reads one thing: the residual stream of a language model after one
# block, on one corpus. This notebook loads the model, runs it over the medical and the
# broad corpus (train and evaluation splits, disjoint documents) and stores the activations
# on disk, keyed by a hash of everything that determines them, so the later notebooks reuse
# them instead of running the model again.

# %%
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display
from myst_nb import glue

from sae_med.data import corpus_info
from sae_med.experiment import load_model_for, stage_cache
from sae_med.notebook import CORPUS_COLORS, setup_notebook

# %% [markdown]
# ## Parameters
# `config` is a YAML file from `configs/`, `overrides` a list of `section.field=value`
# strings and `run_name` (optional) replaces the config's `name`.

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""

# %%
cfg = setup_notebook(config, overrides, run_name)
print(f"run {cfg.name!r}: model {cfg.model.name}, hook {cfg.model.hook_name}")

# %% [markdown]
# ## Compute
# `stage_cache` returns the cache of every (corpus, split) the config asks for, computing
# only what is missing (a complete cache whose key matches is verified and reused).

# %%
model = load_model_for(cfg)
caches = stage_cache(cfg, progress=False)

# %% [markdown]
# ## Results
# ### Model and hook

# %%
display(pd.DataFrame({
    "model": [model.name], "d_model": [model.d_model], "blocks": [model.n_layers],
    "hook": [cfg.model.hook_name],
    "context length (tokens)": [cfg.cache.ctx_len],
    "special tokens dropped": [cfg.cache.exclude_special],
}).T.rename(columns={0: ""}))

# %% [markdown]
# ### Corpora and token counts
# One row per cache. Documents are tokenized one by one and truncated to the context
# length; BOS/EOS/padding are dropped when `special tokens dropped` is true, so the token
# count is the number of stored activation vectors.

# %%
rows = []
for (corpus, split), cache in caches.items():
    info = corpus_info(corpus)
    rows.append({"corpus": corpus, "domain": info.domain, "split": split,
                 "documents": len(cache.doc_ids()), "tokens": cache.n_tokens,
                 "tokens per document": round(cache.n_tokens / max(1, len(cache.doc_ids())), 1),
                 "description": info.description, "cache key": cache.key})
corpora = pd.DataFrame(rows)
n_train = int(corpora[corpora.split == "train"].tokens.sum())
streamed = cfg.train.source == "stream"  # the model makes training activations as it trains
glue("n_train_tokens", n_train, display=False)
glue("train_activations", "activations streamed from the model during training (no "
     "training cache)" if streamed else f"{n_train:,} cached training activations",
     display=False)
glue("n_eval_tokens", int(corpora[corpora.split == "eval"].tokens.sum()), display=False)
display(corpora)

# %% [markdown]
# ### Activation norms, medical vs broad
# The SAEs see these vectors (scaled by one scalar so that E‖x‖² = 1). A corpus whose
# norms sit elsewhere, or with a heavy tail, is harder to fit with the other corpus's SAE.
# When training streams there is no training cache, and the held-out split stands in.

# %%
fig = go.Figure()
norm_rows = []
norm_split = "eval" if streamed else "train"
for (corpus, split), cache in caches.items():
    if split != norm_split:
        continue
    norms = cache.activations().norm(dim=1).numpy()
    norm_rows.append({"corpus": corpus, "mean ‖x‖": norms.mean(), "median ‖x‖":
                      float(pd.Series(norms).median()), "max ‖x‖": norms.max()})
    fig.add_trace(go.Histogram(x=norms, name=corpus, opacity=0.6, nbinsx=80,
                               histnorm="probability",
                               marker_color=CORPUS_COLORS.get(corpus)))
fig.update_layout(barmode="overlay", title=f"‖x‖ at {cfg.model.hook_name} ({norm_split} split)",
                  xaxis_title="activation norm ‖x‖ (L2, model units)",
                  yaxis_title="fraction of tokens")
fig.update_yaxes(type="log")
fig.show()
display(pd.DataFrame(norm_rows).round(1))

# %% [markdown]
# ## Summary
# The caches above hold the activations every later notebook trains on and evaluates
# against. They are keyed by the model's weights, the hook, the corpus content and every
# caching setting, so changing any of them produces a new cache rather than reusing a
# stale one.
