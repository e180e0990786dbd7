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
# # 5. Feature case studies: do the latents track clinical concepts?
#
# ## Overview
# The paper's qualitative claim is that a domain SAE spends its latents on clinical
# concepts where a broad SAE spends them on frequent, generic patterns. The embedded
# medical corpus carries its own concept labels — HPO term names and their `is_a`
# ancestors (e.g. *Abnormality of taste sensation*), ICD-10-CM chapters and blocks (e.g.
# *Certain infectious and parasitic diseases*) — so the claim can be measured without an
# LLM:
#
# 1. **Concept alignment.** For every latent, the concept whose held-out documents it best
#    separates (document-level max activation; AUROC and F1, with the concept and the F1
#    threshold chosen on one half of the documents and scored on the other half).
# 2. **Case studies** for the concepts the paper highlights (taste, infectious disease):
#    the best latent of each SAE, its top-activating windows and its logit-lens tokens.
# 3. **How the two dictionaries relate**: each medical-SAE latent's best broad-SAE match
#    by decoder cosine, classified as shared, split or new.

# %%
import pandas as pd
import plotly.graph_objects as go
import torch
from IPython.display import display
from myst_nb import glue

from sae_med.book import CORPUS_COLORS, domain_pair, notebook_config, use_offline_plotly
from sae_med.experiment import load_model_for, stage_cache, stage_train
from sae_med.features import (
    concept_alignment,
    concept_aurocs,
    doc_max_activations,
    documents_by_id,
    encode_cache,
    logit_lens,
    match_dictionaries,
    top_windows,
)
from sae_med.sae import JumpReLUSAE

# %% [markdown]
# ## Parameters
# `l0_target` picks the SAEs (0: the middle target of the config); `aligned_auroc` is the
# bar for calling a latent aligned with a concept; `case_concepts` the concepts to study.

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
l0_target = 0.0
aligned_auroc = 0.9
min_docs = 5
case_concepts = ["ancestors:Abnormality of taste sensation",
                 "chapter:Certain infectious and parasitic diseases"]

# %%
use_offline_plotly()
cfg = notebook_config(config, overrides, run_name)
medical, broad = domain_pair(cfg)
targets = list(cfg.sae.l0_targets)
target = l0_target or targets[len(targets) // 2]
print(f"run {cfg.name!r}: {medical} and {broad} SAEs at target L0 {target:g}, "
      f"scored on held-out {medical} documents")

# %% [markdown]
# ## Compute
# Caches and SAEs come from the earlier stages (reused when their hashes match). Each SAE
# encodes the held-out medical cache once; latents are kept sparse.

# %%
model = load_model_for(cfg)
caches = stage_cache(cfg, progress=False)
trained = stage_train(cfg, progress=False)
cache = caches[(medical, "eval")]
saes = {c: JumpReLUSAE.load(next(r.path for r in runs if r.l0_target == target))
        for c, runs in trained.items() if c in (medical, broad)}
with torch.no_grad():
    acts = {c: encode_cache(s, cache, progress=False) for c, s in saes.items()}
doc_max = {c: doc_max_activations(a, cache) for c, a in acts.items()}
n_docs = next(iter(doc_max.values())).shape[0]
docs = documents_by_id(medical, "eval", cache.doc_ids()[:n_docs])
labels, ids = [d.labels for d in docs], [d.doc_id for d in docs]
print(f"{cache.n_tokens:,} tokens in {n_docs:,} held-out documents")

# %% [markdown]
# ## Results
# ### Concept alignment
# Held-out AUROC of each latent for its best concept. 0.5 is chance; dead latents sit at
# 0.5. The share of latents above the bar is the headline number.

# %%
alignment, share = {}, {}
try:
    for c in saes:
        alignment[c] = concept_alignment(doc_max[c], labels, ids, min_docs=min_docs)
        share[c] = float((alignment[c].auroc >= aligned_auroc).float().mean())
except ValueError as err:  # too few labelled documents (tiny smoke runs)
    print(f"concept alignment skipped: {err}")
if alignment:
    fig = go.Figure()
    for c, al in alignment.items():
        fig.add_trace(go.Histogram(x=al.auroc.numpy(), name=f"SAE trained on {c}",
                                   opacity=0.6, nbinsx=40, marker_color=CORPUS_COLORS.get(c)))
    fig.add_vline(x=aligned_auroc, line_dash="dash")
    fig.update_layout(barmode="overlay", xaxis_title="held-out AUROC of the best concept",
                      yaxis_title="latents",
                      title=f"Concept alignment at target L0 {target:g} "
                            f"({len(next(iter(alignment.values())).concepts)} concepts)")
    fig.show()
    display(pd.DataFrame([{"SAE": c, f"share AUROC ≥ {aligned_auroc}": share[c],
                           "median AUROC": float(al.auroc.median()),
                           "share F1 ≥ 0.5": float((al.f1 >= 0.5).float().mean())}
                          for c, al in alignment.items()]).round(3))
glue("aligned_share_medical", share.get(medical, float("nan")), display=False)
glue("aligned_share_broad", share.get(broad, float("nan")), display=False)

# %% [markdown]
# The best-aligned latents of the medical SAE and their concepts:

# %%
if medical in alignment:
    al = alignment[medical]
    best = al.auroc.argsort(descending=True)[:10].tolist()
    display(pd.DataFrame([{"latent": j, "concept": al.concept[j],
                           "held-out AUROC": float(al.auroc[j]), "held-out F1": float(al.f1[j])}
                          for j in best]).round(3))

# %% [markdown]
# ### Case studies
# For each highlighted concept: each SAE's latent with the highest AUROC for it (over all
# held-out documents), with its strongest windows (peak token in «guillemets», up to 30
# stored tokens left and 5 right) and the tokens its decoder direction promotes.

# %%
W_U = model.tl.W_U.detach().cpu()
for concept in case_concepts:
    rows = []
    for c in saes:
        au, n_pos = concept_aurocs(doc_max[c], labels, concept)
        if n_pos == 0:
            break
        j = int(torch.nan_to_num(au, nan=0.0).argmax())
        wins = top_windows(acts[c], cache, j, k=3)
        lens = logit_lens(saes[c], W_U, model.tokenizer, j, k=6)
        rows.append({"SAE": c, "latent": j, "AUROC": float(au[j]),
                     "top windows": " ⏎ ".join(w.render(model.tokenizer, "«{}»")
                                               for w in wins),
                     "logit lens (top)": " | ".join(lens.top_tokens)})
    print(f"\n{concept} — {n_pos} of {n_docs} held-out documents")
    if rows:
        with pd.option_context("display.max_colwidth", 400):
            display(pd.DataFrame(rows).round(3))
    else:
        print("  absent from this evaluation set (use a larger eval.n_tokens)")

# %% [markdown]
# ### How the two dictionaries relate
# Each medical-SAE latent's best broad-SAE match by decoder cosine similarity: *shared*
# (cos ≥ 0.7, one-to-one), *split* (several medical latents share one broad latent),
# *related* (0.4 ≤ cos < 0.7) or *new* (cos < 0.4: no counterpart in the broad SAE).

# %%
if len(saes) == 2:
    m = match_dictionaries(saes[medical], saes[broad])
    kinds = pd.Series(m.kind).value_counts().reindex(["shared", "split", "related", "new"],
                                                     fill_value=0)
    fig = go.Figure(go.Bar(x=kinds.index, y=kinds.values))
    fig.update_layout(xaxis_title="medical-SAE latent class", yaxis_title="latents",
                      title=f"Medical-SAE latents vs the broad SAE (target L0 {target:g})")
    fig.show()
    fig = go.Figure(go.Histogram(x=m.cosine.numpy(), nbinsx=50))
    fig.update_layout(xaxis_title="best decoder cosine with a broad-SAE latent",
                      yaxis_title="medical-SAE latents")
    fig.show()
    glue("share_new_latents", float(kinds["new"] / kinds.sum()), display=False)
    if medical in alignment:
        al = alignment[medical]
        new = [j for j in al.auroc.argsort(descending=True).tolist() if m.kind[j] == "new"][:5]
        display(pd.DataFrame([{"latent": j, "concept": al.concept[j],
                               "AUROC": float(al.auroc[j]), "best cosine": float(m.cosine[j])}
                              for j in new]).round(3))
else:
    glue("share_new_latents", float("nan"), display=False)

# %% [markdown]
# ## Summary
# The alignment share compares how many latents of each SAE track a labelled clinical
# concept on held-out documents, at the same width and target L0. Not yet here: the
# absorption test on the HPO hierarchy (parent latent silent while a child latent fires)
# and activation-correlation matching on shared tokens.
