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
# ```{admonition} About this chapter
# - **Teaches:** concept alignment (held-out AUROC of a latent for a labelled concept); top
#   windows and latent dashboards; matching two dictionaries (shared, split and new
#   latents); absorption on the HPO hierarchy.
# - **Before it:** chapter 0 (absorption where the truth is known), chapters 2 and 3 (the
#   trained SAEs and how they are scored); what an AUROC is.
# - **Time, default config:** under a minute with the run made: the default's book build,
#   every stage already run, took 5 min 20 s for its eight notebooks, this one among those
#   that took 3–37 s (benchmarks/RESULTS.md, 2026-12-03).
# - **Time, smoke config:** about 50 s measured here with the smoke run present (2026-12-06,
#   this project's shared 2-core machine under load).
# - **Needs:** CPU only; no internet.
# ```
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
#    the best latent of each SAE, its top-activating windows and its logit-lens tokens,
#    with interactive latent dashboards and a search for the latents active on a phrase.
# 3. **How the two dictionaries relate**: each medical-SAE latent's best broad-SAE match
#    by decoder cosine (classified as shared, split or new) and by activation correlation
#    on the same tokens.
# 4. **Absorption on the HPO hierarchy**: how often a parent concept's latent (e.g. for
#    *Abnormality of taste sensation*) stays silent on a child concept's document (e.g.
#    *Ageusia*) while a more specific latent fires instead — the paper's fragmentation
#    argument, measured as a domain version of SAEBench's first-letter absorption test.

# %%
import pandas as pd
import torch
from IPython.display import HTML, display
from myst_nb import glue

from sae_med.corpora.registry import documents_by_id
from sae_med.experiment import load_model_for, middle_target, saes_at, stage_cache
from sae_med.interpret.dashboard import (
    cards_html,
    dashboard_figure,
    latent_summary,
    phrase_activations,
)
from sae_med.interpret.features import (
    absorption,
    absorption_summary,
    best_concept_latents,
    concept_alignment,
    doc_max_activations,
    encode_cache,
    largest_split,
    match_dictionaries,
    match_summary,
    search_latents,
)
from sae_med.report.case_studies import (
    absorption_figure,
    aligned_share,
    alignment_figure,
    alignment_table,
    best_aligned_table,
    case_study_table,
    match_figures,
    match_kinds,
    new_latents_table,
    split_table,
)
from sae_med.report.exercises import check, exercise_table
from sae_med.report.notebook import domain_pair, setup_notebook

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
n_boot = 1000
case_concepts = ["ancestors:Abnormality of taste sensation",
                 "chapter:Certain infectious and parasitic diseases"]
search_phrase = "loss of the sense of taste"

# %%
cfg = setup_notebook(config, overrides, run_name)
medical, broad = domain_pair(cfg)
target = middle_target(cfg, l0_target)
print(f"run {cfg.name!r}: {medical} and {broad} SAEs at target L0 {target:g}, "
      f"scored on held-out {medical} documents")

# %% [markdown]
# ## Compute
# Caches and SAEs come from the earlier stages (reused when their hashes match). Each SAE
# encodes the held-out medical cache once; latents are kept sparse.

# %%
model = load_model_for(cfg)
cache = stage_cache(cfg, progress=False)[(medical, "eval")]
saes = saes_at(cfg, target, (medical, broad), progress=False)
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
try:
    alignment = {c: concept_alignment(doc_max[c], labels, ids, min_docs=min_docs)
                 for c in saes}
except ValueError as err:  # too few labelled documents (tiny smoke runs)
    alignment = {}
    print(f"concept alignment skipped: {err}")
share = {c: aligned_share(al, aligned_auroc) for c, al in alignment.items()}
if alignment:
    alignment_figure(alignment, aligned_auroc, target).show()
    display(alignment_table(alignment, aligned_auroc).round(3))
glue("aligned_share_medical", share.get(medical, float("nan")), display=False)
glue("aligned_share_broad", share.get(broad, float("nan")), display=False)

# %% [markdown]
# The best-aligned latents of the medical SAE and their concepts:

# %%
if medical in alignment:
    display(best_aligned_table(alignment[medical]).round(3))

# %% [markdown]
# ### Case studies
# For each highlighted concept: each SAE's latent with the highest AUROC for it (over all
# held-out documents), with its strongest windows (peak token in «guillemets», up to 30
# stored tokens left and 5 right) and the tokens its decoder direction promotes.

# %%
W_U = model.W_U.cpu()
studies = {concept: best_concept_latents(doc_max, labels, concept) for concept in case_concepts}
for concept, found_for in studies.items():
    print(f"\n{concept} — {found_for[0].n_docs if found_for else 0} of {n_docs} held-out "
          "documents")
    if found_for:
        with pd.option_context("display.max_colwidth", 400):
            display(case_study_table(found_for, saes, acts, cache, model.tokenizer, W_U)
                    .round(3))
    else:
        print("  absent from this evaluation set (use a larger eval.n_tokens)")
case_latents = [(f.sae, f.latent, f.concept.split(":", 1)[1])
                for found_for in studies.values() for f in found_for]

# %% [markdown]
# ### Latent dashboards
# The case-study latents, then the latents most active on a phrase (`search_phrase`), as
# an interactive figure (pick a latent in the dropdown: its activation histogram and
# logit-lens tokens) and as cards: each window's tokens shaded by the latent's
# activation (hover a token for its value), the peak outlined.

# %%
found = {c: search_latents(s, phrase_activations(model, cfg.model.hook_layer, search_phrase),
                           k=2) for c, s in saes.items()}
print(f"latents most active on {search_phrase!r}:",
      {c: [j for j, _ in f] for c, f in found.items()})
picked = case_latents + [(c, j, f"on {search_phrase!r}") for c, f in found.items()
                         for j, _ in f]
summaries = [latent_summary(saes[c], acts[c], cache, model.tokenizer, W_U, j,
                            label=f"{c} SAE, {why}") for c, j, why in picked]
if summaries:
    dashboard_figure(summaries, "Case-study latents").show()
    display(HTML(cards_html(summaries, model.tokenizer)))

# %% [markdown]
# ### How the two dictionaries relate
# Each medical-SAE latent's best broad-SAE match by decoder cosine similarity: *shared*
# (cos ≥ 0.7, one-to-one), *split* (several medical latents share one broad latent),
# *related* (0.4 ≤ cos < 0.7) or *new* (cos < 0.4: no counterpart in the broad SAE). The
# second view matches by what the latents *do*: the Pearson correlation of their
# activations over the same held-out tokens. Both SAEs start from the same initial
# weights (same seed), so a latent whose decoder barely moved in training matches its
# own index in the other SAE by cosine whatever it learned; the table reports how often
# that happens, and the correlation view does not share this bias.

# %%
if len(saes) == 2:
    m = match_dictionaries(saes[medical], saes[broad], acts_a=acts[medical],
                           acts_b=acts[broad])
    kinds = match_kinds(m)
    alive = acts[medical].firing_rate() > 0
    for fig in match_figures(m, alive, target):
        fig.show()
    ms = match_summary(m, alive)
    display(pd.DataFrame([{
        "live medical latents": ms.live, "median best cosine": ms.median_cosine,
        "median best correlation": ms.median_correlation,
        "share correlation ≥ 0.7": ms.share_correlated,
        "share correlation < 0.4": ms.share_uncorrelated,
        "same best match both ways": ms.agreement,
        "best match has the same index": ms.same_index}]).round(3))
    glue("share_new_latents", float(kinds["new"] / kinds.sum()), display=False)
    glue("match_agreement", ms.agreement, display=False)
    if medical in alignment:
        print("Best-aligned medical latents with no broad counterpart (new):")
        display(new_latents_table(alignment[medical], m).round(3))
    if (split := largest_split(m)) is not None:
        top, group = split
        print(f"A split: broad latent {top} and the {len(group)} medical latents whose best "
              "match it is, with their strongest windows")
        with pd.option_context("display.max_colwidth", 400):
            display(split_table(split, m, acts, cache, model.tokenizer, medical, broad)
                    .round(3))
else:
    glue("share_new_latents", float("nan"), display=False)
    glue("match_agreement", float("nan"), display=False)

# %% [markdown]
# ### Absorption on the HPO hierarchy
# For every HPO ancestor P with at least `min_docs` descendant documents in each half:
# the latent that best separates P's documents (chosen on one half, with its F1
# threshold) is P's *parent latent*; a latent is *specific to P* when ≥ 90% of the
# selection-half documents it fires on are P's. On the held-out half, the *absorption
# rate* is the share of P's documents where the parent latent stays below its threshold
# while a P-specific latent fires. Both SAEs are scored on the same parents and
# documents; intervals are bootstrap 95% over parents.

# %%
absorb = {c: absorption(doc_max[c], labels, ids, min_docs=min_docs) for c in saes}
n_parents = len(next(iter(absorb.values())))
summary = absorption_summary(absorb, n_boot, seed=cfg.seed)
print(f"{n_parents} HPO parent concepts with ≥ {min_docs} documents in each half")
display(summary.round(3))
rate = {c: float(df.absorption_rate.mean()) if len(df) else float("nan")
        for c, df in absorb.items()}
glue("absorption_medical", rate.get(medical, float("nan")), display=False)
glue("absorption_broad", rate.get(broad, float("nan")), display=False)
glue("absorption_parents", n_parents, display=False)
if n_parents:
    absorption_figure(absorb).show()
    worst = absorb[medical].sort_values("absorption_rate", ascending=False).head(8) \
        if medical in absorb else pd.DataFrame()
    display(worst.round(3))

# %% [markdown]
# ## Summary
# The alignment share compares how many latents of each SAE track a labelled clinical
# concept on held-out documents, at the same width and target L0. The matching section
# shows how much of the medical dictionary has a counterpart in the broad one (by
# direction and by behaviour), and the absorption table whether the medical SAE's
# concept latents are more or less often pre-empted by more specific latents than the
# broad SAE's. The headline numbers are quoted on the [results summary](../book/results.md).

# %% [markdown]
# ## Exercises
# Check an answer with `check(label, answer, ...)` (the objects each exercise names): it
# says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("05"))

# %% [markdown]
# ```{exercise} Study another concept
# :label: ex-feat-concept
# `case_concepts` names the concepts of the case studies. Which other ICD-10-CM chapters
# have the most held-out documents here? Pick the most frequent one that is not already
# studied and find each SAE's best latent for it. (To see its windows and dashboard, put
# it in `case_concepts` and rerun.) Check with `check("ex-feat-concept", {"concept": ...,
# "latents": {SAE: latent}}, labels=labels, doc_max=doc_max, case_concepts=case_concepts)`.
# ```
#
# ```{solution-start} ex-feat-concept
# :class: dropdown
# ```
# The document labels (`labels`) and document maxima (`doc_max`) are already in memory, so
# this needs no forward pass.

# %%
from collections import Counter  # noqa: E402

from sae_med.interpret.features import DEFAULT_CONCEPT_KEYS, document_concepts  # noqa: E402

counts = Counter(c for lab in labels for c in document_concepts(lab, DEFAULT_CONCEPT_KEYS)
                 if c.startswith("chapter:"))
display(pd.DataFrame(counts.most_common(5), columns=["concept", "held-out documents"]))
fresh = next((c for c, _ in counts.most_common() if c not in case_concepts), None)
if fresh is None:
    print("no other chapter among the held-out documents (use a larger eval.n_tokens)")
else:
    best = best_concept_latents(doc_max, labels, fresh)
    display(pd.DataFrame(best).round(3))
    print(f"case_concepts = {[*case_concepts, fresh]!r}")
    display(check("ex-feat-concept",
                  {"concept": fresh, "latents": {f.sae: f.latent for f in best}},
                  labels=labels, doc_max=doc_max, case_concepts=case_concepts).require())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Search another phrase
# :label: ex-feat-phrase
# Change `search_phrase` to a clinical phrase of your own. Do the two SAEs' most active
# latents on it also fire on the original phrase? Check the latents shared between the top
# 5 on your phrase and `found` with `check("ex-feat-phrase", {SAE: shared}, saes=saes,
# x_new=x_new, found=found)`.
# ```
#
# ```{solution-start} ex-feat-phrase
# :class: dropdown
# ```
# One forward pass of the model per phrase; `found` holds the latents of the original
# phrase.

# %%
new_phrase = "fever, rash and swollen lymph nodes"
x_new = phrase_activations(model, cfg.model.hook_layer, new_phrase)
rows = []
for c, s in saes.items():
    new = search_latents(s, x_new, k=5)
    old = {j for j, _ in found[c]}
    rows.append({"SAE": c, f"top latents on {new_phrase!r}": [j for j, _ in new],
                 f"shared with {search_phrase!r}": sorted(old & {j for j, _ in new})})
display(pd.DataFrame(rows))
check("ex-feat-phrase", {r["SAE"]: r[f"shared with {search_phrase!r}"] for r in rows},
      saes=saes, x_new=x_new, found=found).require()

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Move the alignment bar
# :label: ex-feat-bar
# The headline counts latents with held-out AUROC ≥ `aligned_auroc`. How does the share of
# aligned latents of each SAE change as the bar moves? Does the ordering of the two SAEs
# depend on where you put it? Check the shares with `check("ex-feat-bar", {SAE: {bar:
# share}}, alignment=alignment, bars=bars)`.
# ```
#
# ```{solution-start} ex-feat-bar
# :class: dropdown
# ```
# `alignment` holds every latent's held-out AUROC, so any bar is one comparison away.

# %%
bars = [0.6, 0.7, 0.8, 0.9, 0.95]
if alignment:
    display(pd.DataFrame([{"SAE": c, **{f"AUROC ≥ {b}": float((al.auroc >= b).float().mean())
                                        for b in bars}}
                          for c, al in alignment.items()]).round(3))
    shares = {c: {b: float((al.auroc >= b).float().mean()) for b in bars}
              for c, al in alignment.items()}
    display(check("ex-feat-bar", shares, alignment=alignment, bars=bars).require())
else:
    print("concept alignment was skipped in this run (too few labelled documents)")

# %% [markdown]
# ```{solution-end}
# ```
