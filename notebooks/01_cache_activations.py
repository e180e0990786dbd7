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
# ```{admonition} About this chapter
# - **Teaches:** what the residual stream is and where the SAEs read it; how activations are
#   cached on disk, keyed by a hash of everything that determines them, and reused; how the
#   corpora compare in tokens and activation norms.
# - **Before it:** chapter 0 (what an SAE reads); what a transformer block and its residual
#   stream are.
# - **Time, default config:** the last measured run built Gemma-3-270M's four caches from
#   nothing in 2 min 33 s (benchmarks/RESULTS.md, 2026-12-03, 2 cores with native bf16;
#   RESULTS projects about 9 min where bf16 is not native); the default has since added
#   mixed_10's training cache, not yet timed. Seconds when `sae-med run` made the caches.
# - **Time, smoke config:** about 2 min measured here with the smoke run's caches present
#   (114 s, 2026-12-06, this project's shared 2-core machine under load; 84 s of it in the
#   first exercise's solution, a forward pass per block).
# - **Needs:** CPU only. Internet once, for `sae-med prepare` (or `make run`) to fetch the
#   embedded model and corpora; the hub path (`configs/paper_gemma2_2b.yaml`) needs internet
#   and a GPU.
# ```
#
# ## Overview
# Every SAE in this book reads one thing: the residual stream of a language model after one
# block, on one corpus. This notebook loads the model, runs it over the medical and the
# broad corpus (train and evaluation splits, disjoint documents) and stores the activations
# on disk, keyed by a hash of everything that determines them, so the later notebooks reuse
# them instead of running the model again.

# %%
import pandas as pd
from IPython.display import display
from myst_nb import glue

from sae_med.corpora.registry import corpus_info
from sae_med.experiment import load_model_for, stage_cache
from sae_med.report.caches import (
    activation_norms,
    cache_table,
    norm_figure,
    norm_table,
    split_tokens,
)
from sae_med.report.exercises import check, exercise_table
from sae_med.report.notebook import setup_notebook

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
corpora = cache_table(caches)
n_train = split_tokens(corpora, "train")
streamed = cfg.train.source == "stream"  # the model makes training activations as it trains
glue("n_train_tokens", n_train, display=False)
glue("train_activations", "activations streamed from the model during training (no "
     "training cache)" if streamed else f"{n_train:,} cached training activations",
     display=False)
glue("n_eval_tokens", split_tokens(corpora, "eval"), display=False)
display(corpora)

# %% [markdown]
# ### Activation norms, medical vs broad
# The SAEs see these vectors (scaled by one scalar so that E‖x‖² = 1). A corpus whose
# norms sit elsewhere, or with a heavy tail, is harder to fit with the other corpus's SAE.
# When training streams there is no training cache, and the held-out split stands in.

# %%
norm_split = "eval" if streamed else "train"
norms = activation_norms(caches, norm_split)
norm_figure(norms, cfg.model.hook_name, norm_split).show()
display(norm_table(norms).round(1))

# %% [markdown]
# ## Summary
# The caches above hold the activations every later notebook trains on and evaluates
# against. They are keyed by the model's weights, the hook, the corpus content and every
# caching setting, so changing any of them produces a new cache rather than reusing a
# stale one.

# %% [markdown]
# ## Exercises
# Check an answer with `check(label, answer, ...)` (the objects each exercise names): it
# says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("01"))

# %% [markdown]
# ```{exercise} Change the hook layer
# :label: ex-cache-layer
# The SAEs read the residual stream after block `model.hook_layer`. Rerun this notebook
# with a shallower block (set `overrides = ["model.hook_layer=N"]` in the parameters cell,
# or pass the override to `sae-med book`). Is the existing cache reused? And before you
# spend the time: how do ‖x‖ and the share of one constant vector, ‖E[x]‖ / E‖x‖, change
# with depth? Measure them at every block on a few evaluation documents. Check with
# `check("ex-cache-layer", {"reused": ..., "mean_norm": {block: ...}}, key_now=...,
# key_other=..., model=model, batch=batch)`.
# ```
#
# ```{solution-start} ex-cache-layer
# :class: dropdown
# ```
# The cache key hashes the hook, so another block gets a new cache (the old one stays for
# the old block). One forward pass per block over eight documents shows the depth
# profile; the row of the configured block should sit close to the cache's own statistics
# in the table above.

# %%
import itertools  # noqa: E402

from sae_med.artifacts import stable_hash  # noqa: E402
from sae_med.cache.activations import cache_spec  # noqa: E402
from sae_med.corpora.registry import iter_documents  # noqa: E402
from sae_med.report.parameters import notebook_config  # noqa: E402

first_corpus = next(iter(caches))[0]
shallower = cfg.model.hook_layer // 2
cfg_other = notebook_config(config, [*overrides, f"model.hook_layer={shallower}"], run_name)
key_other = stable_hash(cache_spec(model, cfg_other, first_corpus, "train"))
print(f"sae-med book {config} {' '.join(overrides)} model.hook_layer={shallower}")
print(f"{first_corpus}/train cache at block {cfg.model.hook_layer}: "
      f"{caches[(first_corpus, 'train')].key}; at block {shallower}: {key_other}")

texts = [d.text for d in itertools.islice(iter_documents(first_corpus, "eval"), 8)]
batch = model.tokenize(texts, cfg.cache.ctx_len, cfg.cache.exclude_special)
batch = batch._replace(tokens=batch.tokens.to(model.device),
                       attention_mask=batch.attention_mask.to(model.device))
depth = []
for layer in range(model.n_layers):
    x = model.resid(batch.tokens, batch.attention_mask, layer)[batch.keep.to(model.device)]
    x = x.float().cpu()
    depth.append({"block": layer, "mean ‖x‖": float(x.norm(dim=1).mean()),
                  "‖E[x]‖ / E‖x‖": float(x.mean(0).norm() / x.norm(dim=1).mean()),
                  "hooked": "◀ configured" if layer == cfg.model.hook_layer else ""})
display(pd.DataFrame(depth).round(3))
answer = {"reused": key_other == caches[(first_corpus, "train")].key,
          "mean_norm": {d["block"]: d["mean ‖x‖"] for d in depth}}
check("ex-cache-layer", answer, key_now=caches[(first_corpus, "train")].key,
      key_other=key_other, model=model, batch=batch).require()

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Add a corpus
# :label: ex-cache-corpus
# The registry in `sae_med/corpora/registry.py` holds more corpora than this run uses. List them,
# add one as an extra evaluation corpus (`eval_corpora=[..., NAME]`) and check that the
# override resolves. How long are its documents compared with the corpora cached above?
# Check the median tokens per document of each corpus's first 32 evaluation documents
# with `check("ex-cache-corpus", {corpus: median}, tokenizer=model.tokenizer,
# corpora=cfg_extra.eval_corpora)`.
# ```
#
# ```{solution-start} ex-cache-corpus
# :class: dropdown
# ```
# `list_corpora` and `corpus_info` describe every registered corpus; the override is
# checked by loading the config with it, and the tokenizer alone (no forward pass) gives
# the document lengths. Hub corpora need the network, so the solution picks an embedded
# one.

# %%
from dataclasses import asdict  # noqa: E402

from sae_med.corpora.registry import list_corpora  # noqa: E402

registry = pd.DataFrame([asdict(corpus_info(n)) for n in list_corpora()])
display(registry[["name", "kind", "domain", "description"]])
extra = next(n for n in list_corpora() if n not in cfg.eval_corpora
             and corpus_info(n).kind == "embedded" and not corpus_info(n).is_mix)
cfg_extra = notebook_config(config, [*overrides,
                                     f"eval_corpora=[{','.join([*cfg.eval_corpora, extra])}]"],
                            run_name)
print(f"sae-med book {config} {' '.join(overrides)} "
      f"eval_corpora=[{','.join(cfg_extra.eval_corpora)}]")
lengths = []
for name in cfg_extra.eval_corpora:
    docs = [d.text for d in itertools.islice(iter_documents(name, "eval"), 32)]
    n_tok = [len(model.tokenizer(t)["input_ids"]) for t in docs]
    lengths.append({"corpus": name, "documents sampled": len(n_tok),
                    "median tokens per document": float(pd.Series(n_tok).median()),
                    "share truncated at ctx_len": sum(n > cfg.cache.ctx_len for n in n_tok)
                    / max(1, len(n_tok))})
display(pd.DataFrame(lengths).round(2))
check("ex-cache-corpus", {r["corpus"]: r["median tokens per document"] for r in lengths},
      tokenizer=model.tokenizer, corpora=cfg_extra.eval_corpora).require()

# %% [markdown]
# ```{solution-end}
# ```
