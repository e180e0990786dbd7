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
# # 7. Where the SAE's error hurts the model
#
# ```{admonition} About this chapter
# - **Teaches:** where splicing an SAE in costs the model: baselines (zero and mean
#   ablation), random error of the same size, and ΔCE broken down by position, norm and
#   token frequency.
# - **Before it:** chapter 3 (ΔCE and loss recovered); what cross-entropy is.
# - **Time, default config:** five spliced passes per SAE over the first 1,024 scored
#   tokens (`max_tokens`); over all 4,096 of the evaluation's it took more than 19 min on
#   an AVX2-only CPU (2026-12-06). Not yet timed at 1,024.
# - **Time, smoke config:** about 2.5 min measured here with the smoke run present (165 s,
#   2026-12-06, this project's shared 2-core machine under load; the diagnosis is recomputed
#   on every run).
# - **Needs:** CPU only; no internet.
# ```
#
# ## Overview
# Splicing an SAE into the residual stream costs the model ΔCE nats per token. This
# notebook asks where that damage comes from, for replicate 0 of each training corpus at
# the middle target L0, on the first evaluation corpus's CE documents
# (`sae_med.measure.diagnose`):
#
# - **Baselines.** Zero ablation (the denominator of "loss recovered") can sit far above
#   the clean loss, which compresses loss recovered towards 1; *mean ablation* (x → E[x])
#   is a much closer reference, so "recovered vs mean" = 1 − ΔCE_SAE / ΔCE_mean says how
#   much of a *realistic* loss the SAE avoids.
# - **Random error of the same size.** x + ε with ‖ε_t‖ = ‖x_t − x̂_t‖ and a random
#   direction (anywhere, or inside the subspace the SAE's errors span). If the SAE's own
#   error hurts more than random error of the same size, its *direction* is the problem.
# - **Breakdowns** of ΔCE by token position, by ‖x‖ decile and by how frequent the token
#   is in the training cache, and the damage carried by the few residual dimensions with
#   massive activations.

# %%
from IPython.display import display
from myst_nb import glue

from sae_med.experiment import stage_diagnose
from sae_med.measure.diagnose import bins_frame, summary_frame
from sae_med.report.damage import breakdown_figures, damage_text, damage_values
from sae_med.report.exercises import check, exercise_table
from sae_med.report.notebook import setup_notebook

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
# scored tokens of the evaluation's CE documents to diagnose (the first of them; 0: all).
# Every SAE here costs five spliced passes, so the default's 4,096 would make this the
# book's slowest chapter; a diagnosis needs fewer tokens than a claim's interval.
max_tokens = 1024

# %%
cfg = setup_notebook(config, overrides, run_name)

# %% [markdown]
# ## Compute

# %%
reports = stage_diagnose(cfg, max_tokens=max_tokens, progress=False)
summary = summary_frame(reports)

# %% [markdown]
# ## Results
# ### Baselines and random error

# %%
display(summary.T.round(3))
print(damage_text(reports))
for name, value in damage_values(reports).items():
    glue(name, value, display=False)

# %% [markdown]
# ### Breakdowns

# %%
for fig in breakdown_figures(reports):
    fig.show()

# %% [markdown]
# ## Summary
# ΔCE of the SAE minus ΔCE of random error of the same size, per training corpus:
# {glue:text}`damage_excess` nats against isotropic noise and
# {glue:text}`damage_excess_subspace` nats against noise inside the SAE error's own
# subspace (positive: the SAE's error directions hurt more than random ones; SAE errors
# are known to be more damaging than random ones of their size, Gurnee 2024). The residual
# at this hook is ‖E[x]‖ / E‖x‖ = {glue:text}`mean_share` one constant vector, which is
# why the default config trains on centred inputs (see the method page). The breakdowns
# above show whether the damage concentrates on early
# positions, on high-norm tokens, on rare tokens, or in the massive-activation dimensions
# (table: their share of the error and the ΔCE left once their error is removed).

# %% [markdown]
# ## Exercises
# Check an answer with `check(label, answer, ...)` (the objects each exercise names): it
# says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("07"))

# %% [markdown]
# ```{exercise} Recompute "recovered vs mean"
# :label: ex-damage-recovered
# From the CE values in each report, recompute loss recovered against zero ablation and
# against mean ablation, (CE_baseline − CE_spliced) / (CE_baseline − CE_clean), and check
# them against the table. Check with `check("ex-damage-recovered", {SAE: {"vs zero": ...,
# "vs mean": ...}}, reports=reports)`.
# ```
#
# ```{solution-start} ex-damage-recovered
# :class: dropdown
# ```
# Each `DamageReport` carries the four cross-entropies.

# %%
import pandas as pd  # noqa: E402


def recovered(r, baseline: float) -> float:
    return (baseline - r.ce_spliced) / (baseline - r.ce_clean)


display(pd.DataFrame([{"SAE": name,
                       "vs zero (recomputed)": recovered(r, r.ce_zero),
                       "vs zero (report)": r.loss_recovered_vs_zero,
                       "vs mean (recomputed)": recovered(r, r.ce_mean_ablation),
                       "vs mean (report)": r.loss_recovered_vs_mean}
                      for name, r in reports.items()]).round(4))
check("ex-damage-recovered", {name: {"vs zero": recovered(r, r.ce_zero),
                                     "vs mean": recovered(r, r.ce_mean_ablation)}
                              for name, r in reports.items()}, reports=reports).require()

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Where does the damage sit?
# :label: ex-damage-where
# For each SAE, which token-position bin, ‖x‖ decile and frequency quintile carries the
# largest share of the total ΔCE? Is the damage spread evenly, or concentrated? Check the
# bins with `check("ex-damage-where", {(SAE, breakdown): bin}, reports=reports)`.
# ```
#
# ```{solution-start} ex-damage-where
# :class: dropdown
# ```
# `bins_frame` gives each breakdown as a table; `share` sums to 1 over a breakdown's bins,
# so an even spread puts 1 / (number of bins) in each.

# %%
peaks = []
for field in ("by_position", "by_norm_decile", "by_frequency"):
    frame = bins_frame(reports, field)
    for name, g in frame.groupby("sae"):
        top = g.loc[g.share.idxmax()]
        peaks.append({"SAE": name, "breakdown": field, "largest bin": top.bin,
                      "its share of ΔCE": top.share, "even share": 1 / len(g)})
display(pd.DataFrame(peaks).round(3))
check("ex-damage-where", {(p["SAE"], p["breakdown"]): p["largest bin"] for p in peaks},
      reports=reports).require()

# %% [markdown]
# ```{solution-end}
# ```
