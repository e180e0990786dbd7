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
# # 10. Other architectures, other widths
#
# ```{admonition} About this chapter
# - **Teaches:** whether the domain SAE's advantage is a property of JumpReLU at one width:
#   the same experiment for five SAE architectures on two models, and at five widths; a
#   verdict rule per architecture, a crossover width and a slope test, each declared before
#   the runs that judge them.
# - **Before it:** chapters 3 and 9 (paired gaps and their intervals, the mixed SAE that has
#   seen medicine); what TopK and Matryoshka SAEs are.
# - **Time, default config:** seconds: it only reads two experiments made elsewhere, each of
#   several runs. The architecture matrix (`sae-med experiment configs/matrix.yaml`) is not
#   timed as a whole: ten runs of the default experiment's size; a TopK-family Gemma run
#   took about 40 minutes on a 2-core CPU with native bf16 and is longer without (the
#   default's Gemma half took 78 minutes on an AVX2-only one; `benchmarks/RESULTS.md`); the
#   two JumpReLU runs are the default's own, reused when made. The
#   width axis (`sae-med experiment configs/width.yaml`) is not timed yet either: estimated
#   at 2 to 4 hours on the 2-core machine kind, plus about an hour for each of its width-8
#   runs (the default's and the matrix's Matryoshka run) not made already.
# - **Time, smoke config:** about 30 s measured here without either experiment's runs
#   (29 s alone, kernel start included; 2026-12-06, this project's shared 2-core machine
#   under load).
# - **Needs:** CPU only; no internet.
# ```
#
# ## Overview
# Every SAE of the earlier chapters is a JumpReLU SAE of 8 × d_model latents. Two
# questions remain before the domain effect can be called a property of domain SAEs:
#
# 1. **Architectures.** `configs/matrix.yaml` repeats the default experiment (three target
#    L0s, three seeds, medical, broad and mixed_10 SAEs, both models) for ReLU with an L1
#    penalty, JumpReLU, TopK, BatchTopK and Matryoshka-BatchTopK. Per architecture and
#    model: the medical SAE minus the broad and minus the mixed_10 SAE on medical text, in
#    typical-token FVE, ΔCE and R²(e), and a verdict per architecture (*holds*, *reverses*,
#    *fails*) by the rule on the [method page](../book/method.md).
# 2. **Widths.** `configs/width.yaml` trains the three SAEs at 2, 4, 8, 16 and 32 × d_model
#    at target L0 40 (JumpReLU and Matryoshka-BatchTopK, Gemma). The capacity thesis
#    predicts that the medical − mixed_10 gap shrinks as the SAEs widen: a general SAE
#    that has seen the domain spends its latents on generic features, and a wider one has
#    latents to spare. The chapter gives the *crossover*, the smallest width from which
#    the other SAE matches the medical one, where the gap itself reaches 0 with an
#    interval, and a declared slope test of the gap on log width.
#
# Both experiments are read, never run here: each trains many SAE families. Where their
# runs are absent, each section says so and names the command that makes them. The tables
# and sentences come from `sae_med.report.matrix` and `sae_med.report.width`, never typed.

# %%
import numpy as np
from IPython.display import display
from myst_nb import glue

from sae_med.config import load_config
from sae_med.measure.bootstrap import Interval
from sae_med.report.exercises import check, exercise_table
from sae_med.report.matrix import (
    MATRIX_COMMAND,
    gap_table,
    matrix_cells,
    read_matrix,
    runs_note,
    verdict_table,
)
from sae_med.report.notebook import setup_notebook
from sae_med.report.width import (
    WIDTH_COMMAND,
    capacity_verdict,
    crossover,
    crossover_sentence,
    family_table,
    read_widths,
    width_families,
    width_figure,
    width_gap_table,
    width_series,
    width_trend,
)

# %% [markdown]
# ## Parameters
# `matrix_config` and `width_config` are the two experiments' configs, read for where their
# runs are (`side_overrides`, e.g. `["output_dir=elsewhere"]`, applies to both); `config`
# is this book's run, which the chapter does not use beyond its setup.

# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
matrix_config = "configs/matrix.yaml"
width_config = "configs/width.yaml"
side_overrides = []

# %%
cfg = setup_notebook(config, overrides, run_name)
matrix_cfg = load_config(matrix_config, side_overrides)
width_cfg = load_config(width_config, side_overrides)
matrix_runs, width_runs = read_matrix(matrix_cfg), read_widths(width_cfg)
matrix_note = runs_note("architecture matrix", [r.run for r in matrix_runs
                                                if r.comparisons is None],
                        len(matrix_runs), MATRIX_COMMAND, matrix_cfg.output_dir)
width_note = runs_note("width axis", [r.run for r in width_runs if r.comparisons is None],
                       len(width_runs), WIDTH_COMMAND, width_cfg.output_dir)
matrix_present = any(r.comparisons is not None for r in matrix_runs)
width_present = any(r.comparisons is not None for r in width_runs)

# %% [markdown]
# ## Results
# ### The architecture matrix
# Per architecture, model and comparison, the medical SAE minus the other SAE on held-out
# medical text at each target L0, "value [low, high]" (paired 95% intervals over seeds and
# document groups), and the cell's verdict. For ΔCE and R²(e) a *negative* gap favours the
# medical SAE. If the matrix has not been run, the note says how to make it: ten runs,
# each the size of the default experiment (its measured time is in
# `benchmarks/RESULTS.md`).

# %%
cells = matrix_cells(matrix_runs)
print(matrix_note)
if matrix_present:
    display(gap_table(cells))

# %% [markdown]
# One verdict per architecture and comparison, over both models (and over the three
# metrics together): *holds* or *reverses* only when every model says so, *not judged*
# when a model's medical SAEs fail the 1-nat quality bar.

# %%
matrix_verdicts = verdict_table(cells if matrix_present else [], note=matrix_note)
if matrix_present:
    display(matrix_verdicts)
glue("matrix_verdict_table", matrix_verdicts, display=False)  # a note when not run

# %% [markdown]
# ### The width axis
# Each training corpus's SAEs on held-out medical text at target L0 40, against width
# (across-seed means with their 95% intervals). If the width axis has not been run, the
# note says how to make it: estimated at 2 to 4 hours on 2 cores.

# %%
families = width_families(width_runs)
print(width_note)
if width_present:
    display(family_table(families))
    width_figure(families, "fve_typical", "typical-token FVE (higher is better)",
                 "Typical-token FVE on medical text against SAE width").show()
    width_figure(families, "delta_ce", "ΔCE, nats per token (lower is better)",
                 "ΔCE on medical text against SAE width").show()

# %% [markdown]
# The medical SAE minus the broad and minus the mixed_10 SAE at every width, the crossover
# (the smallest width from which the gap's interval holds 0 or reverses, there and at every
# larger width: where the gap stops being resolved), where the gap itself reaches 0 with
# its 95% interval (a parametric bootstrap over the widths' gaps, drawn independently
# though they share eval documents; "≤ 2×" or "> 32×" where draws cross outside the widths
# run) and the slope test of the medical SAE's advantage on log2 width.

# %%
series = width_series(width_runs)
capacity = capacity_verdict(series)
capacity_sentence = "; ".join(f"{arch}: {verdict}" for arch, verdict in capacity.items())
width_sentence = crossover_sentence(series) if width_present else width_note
if width_present:
    display(width_gap_table(series))
print(width_sentence, f"The capacity prediction (the medical − mixed_10 advantage shrinks "
      f"with width): {capacity_sentence}.", sep="\n\n")

# %% [markdown]
# ### The sentences
# What the results page can quote, computed from the runs above.

# %%
glue("matrix_runs_note", matrix_note, display=False)
glue("width_runs_note", width_note, display=False)
glue("width_crossover_sentence", width_sentence, display=False)
glue("width_capacity_verdicts", capacity_sentence, display=False)

# %% [markdown]
# ## Summary
# If the medical SAE's advantage holds for every architecture, it is not JumpReLU's
# threshold at work; if an architecture reverses it, the claim is about that SAE family,
# not about domains. On the width axis, a medical − mixed_10 gap that shrinks and closes at
# some width is what the capacity thesis predicts; a medical − broad gap that stays open at
# every width while the mixed gap closes says the broad SAE's deficit is one of exposure,
# not of capacity. Neither experiment varies the model's size or the token budget, and the
# width axis holds one target L0 and one model: a crossover there is not a crossover at
# every sparsity.

# %% [markdown]
# ## Exercises
# Check an answer with `check(label, answer, ...)` (the objects each exercise names): it
# says *right*, *close* or *wrong, because …*.

# %%
display(exercise_table("10"))

# %% [markdown]
# ```{exercise} A crossover by hand
# :label: ex-width-crossover
# A medical − mixed gap in typical-token FVE (positive favours the medical SAE) reads, at
# 2, 4, 8, 16 and 32 × d_model: 0.10 [0.09, 0.11], 0.06 [0.05, 0.07],
# 0.02 [0.005, 0.035], 0.00 [−0.02, 0.02] and −0.01 [−0.03, 0.01]. By the declared rule,
# where is the crossover, and at which width does the interval's lower end reach 0 on a
# log2-width line between the bracketing widths? Hold the gaps as `gaps = {width:
# Interval(value, low, high)}` (as the solution does) and check your answer with
# `check("ex-width-crossover", {"below": width, "width": width, "estimate": width},
# gaps=gaps, sign=1)`; `crossover(gaps, 1)` gives the package's own.
# ```
#
# ```{solution-start} ex-width-crossover
# :class: dropdown
# ```
# Walk down from the largest width while the interval holds 0 (or lies below it): 32× and
# 16× do, 8× does not (its lower end is 0.005), so the crossover lies in (8×, 16×].
# Between them the lower end runs from 0.005 to −0.02, reaching 0 a fifth of the way.

# %%
gaps = {2: Interval(0.10, 0.09, 0.11), 4: Interval(0.06, 0.05, 0.07),
        8: Interval(0.02, 0.005, 0.035), 16: Interval(0.0, -0.02, 0.02),
        32: Interval(-0.01, -0.03, 0.01)}
by_hand = 2 ** (3 + 0.005 / (0.005 + 0.02))
print(f"crossover in (8×, 16×], about {by_hand:.2f}×; the package: {crossover(gaps, 1)}")
display(check("ex-width-crossover", {"below": 8, "width": 16, "estimate": by_hand},
              gaps=gaps, sign=1).require())

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} What the weights do in the slope test
# :label: ex-width-slope
# The slope test weights each width by 1/se² of its gap (se = the interval's width /
# (2 × 1.96)). Fit an ordinary (unweighted) least-squares line to the point values of the
# gaps above against log2 width, and compare its slope with `width_trend(gaps, 1).slope`.
# Then make the 32× interval four times as wide: which slope moves, and why? Check your
# three slopes with `check("ex-width-slope", {"unweighted": slope, "weighted": slope,
# "widened": slope}, gaps=gaps, sign=1)`.
# ```
#
# ```{solution-start} ex-width-slope
# :class: dropdown
# ```
# The intervals differ in width (0.02 at 2× and 4×, 0.03 at 8×, 0.04 at 16× and 32×), so
# the two slopes differ a little;
# widening the 32× interval moves only the weighted slope, which then leans less on the
# least certain width.

# %%
x = np.log2(list(gaps))
plain = np.polyfit(x, [g.value for g in gaps.values()], 1)[0]
weighted = width_trend(gaps, 1).slope.value
widened = width_trend({**gaps, 32: Interval(-0.01, -0.09, 0.07)}, 1).slope.value
print(f"unweighted {plain:+.4f}, weighted {weighted:+.4f}, "
      f"weighted with a wide 32× interval {widened:+.4f}")
display(check("ex-width-slope", {"unweighted": plain, "weighted": weighted,
                                 "widened": widened}, gaps=gaps, sign=1).require())

# %% [markdown]
# ```{solution-end}
# ```
