"""Checked exercises: a learner's answer in, *right*, *close* or *wrong, because …* out.

Every exercise of the book that asks for a number or for code is registered here under
its ``{exercise}`` label with a difficulty and a time budget. ``check(label, answer,
**data)`` recomputes the answer from the same data the notebook holds (never from typed-in
numbers) and compares; a solution cell ends with ``check(...).require()``, so a solution
that stops being right fails the book build. :func:`exercise_table` lists a chapter's
exercises for its Exercises section.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import torch

from sae_med.corpora import registry
from sae_med.interpret.features import (
    DEFAULT_CONCEPT_KEYS,
    concept_aurocs,
    document_concepts,
    search_latents,
)
from sae_med.interpret.synthetic import (
    absorption_table,
    plant,
    recovery,
    sample,
    score_sae,
    truth_sae,
)
from sae_med.layout import CFG_FILENAME, sae_dirs
from sae_med.measure.bootstrap import Interval
from sae_med.measure.diagnose import bins_frame
from sae_med.report.claims import oriented_gaps
from sae_med.report.notebook import metric_value
from sae_med.report.width import CROSSOVER, crossover, width_trend

Difficulty = Literal["starter", "core", "stretch"]
"""starter: read a number off a table; core: a few lines of code; stretch: a new run or
an idea the chapter only hints at."""


class Verdict(StrEnum):
    RIGHT = "right"
    CLOSE = "close"
    WRONG = "wrong"


class ExerciseCheckError(AssertionError):
    """A solution's answer did not pass its own exercise's check."""


@dataclass(frozen=True)
class CheckResult:
    """What a check says about one answer."""

    label: str
    verdict: Verdict
    reason: str = ""
    """Why it is wrong or only close (empty when right)."""

    @property
    def right(self) -> bool:
        return self.verdict is Verdict.RIGHT

    def __str__(self) -> str:
        if self.verdict is Verdict.RIGHT:
            return f"{self.label}: right"
        joiner = ", because " if self.verdict is Verdict.WRONG else ": "
        return f"{self.label}: {self.verdict}{joiner}{self.reason}"

    def _repr_markdown_(self) -> str:
        mark = {"right": "✅", "close": "🟡", "wrong": "❌"}[self.verdict]
        return f"{mark} **{self}**"

    def require(self) -> CheckResult:
        """Self when right; raise otherwise (solution cells: the build must fail)."""
        if not self.right:
            raise ExerciseCheckError(str(self))
        return self


@dataclass(frozen=True)
class Exercise:
    """One checked exercise."""

    label: str
    """The ``{exercise}`` label in its notebook."""
    chapter: str
    """The notebook's number, e.g. ``"02"``."""
    difficulty: Difficulty
    minutes: int
    """Time budget for a learner who has run the chapter."""
    answer: str
    """The form the check expects its answer in."""
    check: Callable[..., CheckResult]


EXERCISES: dict[str, Exercise] = {}


def exercise(label: str, chapter: str, difficulty: Difficulty, minutes: int, answer: str
             ) -> Callable[[Callable[..., CheckResult]], Callable[..., CheckResult]]:
    """Register the decorated check under ``label``."""
    def register(fn: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        if label in EXERCISES:
            raise ValueError(f"exercise {label!r} registered twice")
        EXERCISES[label] = Exercise(label, chapter, difficulty, minutes, answer, fn)
        return fn
    return register


def check(label: str, answer: Any, **data: Any) -> CheckResult:
    """Check ``answer`` to exercise ``label``; ``data`` are the notebook objects the
    exercise names (see ``EXERCISES[label].answer`` for the answer's form)."""
    if label not in EXERCISES:
        raise KeyError(f"no checked exercise {label!r}; known: {', '.join(EXERCISES)}")
    try:
        return EXERCISES[label].check(answer, **data)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as err:
        # a malformed answer is the learner's to fix, not a crash
        return CheckResult(label, Verdict.WRONG, f"the answer is not in the expected form "
                           f"({EXERCISES[label].answer}): {type(err).__name__}: {err}")


def exercises_of(chapter: str) -> list[Exercise]:
    """The chapter's checked exercises, in registration (notebook) order."""
    return [e for e in EXERCISES.values() if e.chapter == chapter]


# ------------------------------------------------------------------------- comparisons

def right(label: str) -> CheckResult:
    return CheckResult(label, Verdict.RIGHT)


def wrong(label: str, reason: str) -> CheckResult:
    return CheckResult(label, Verdict.WRONG, reason)


def compare_number(label: str, what: str, answer: Any, expected: float, tol: float = 0.005,
                   close: float = 0.05, relative: bool = False) -> CheckResult:
    """Right within ``tol`` of ``expected`` (absolute, or relative to it), close within
    ``close``, wrong beyond. The reason says which way it is off, not the value."""
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):  # numpy's too
        return wrong(label, f"{what} should be a number, got {type(answer).__name__}")
    if math.isnan(expected):
        ok = math.isnan(answer)
        return right(label) if ok else wrong(label, f"{what} is undefined (NaN) here")
    scale = abs(expected) if relative and expected else 1.0
    off = (answer - expected) / scale
    side = "above" if off > 0 else "below"
    unit = " (relative)" if relative else ""
    if abs(off) <= tol:
        return right(label)
    if abs(off) <= close:
        return CheckResult(label, Verdict.CLOSE, f"{what} is {abs(off):.3g}{unit} {side} "
                           "the recomputed value: check rounding or which rows you used")
    return wrong(label, f"{what} is {abs(off):.3g}{unit} {side} the value recomputed from "
                 "the data")


def compare_numbers(label: str, what: str, answer: Mapping, expected: Mapping,
                    **tolerance: Any) -> CheckResult:
    """:func:`compare_number` per key; the keys must match. Worst verdict wins."""
    if not isinstance(answer, Mapping):
        return wrong(label, f"{what} should be a mapping keyed like "
                     f"{next(iter(expected), '...')!r}")
    missing, extra = set(expected) - set(answer), set(answer) - set(expected)
    if missing or extra:
        return wrong(label, f"{what} has keys {sorted(map(str, extra))} that should not be "
                     f"there and lacks {sorted(map(str, missing))}")
    results = [compare_number(label, f"{what}[{k!r}]", answer[k], expected[k], **tolerance)
               for k in expected]
    return next((r for r in results if r.verdict is Verdict.WRONG),
                next((r for r in results if r.verdict is Verdict.CLOSE), right(label)))


def compare_same(label: str, what: str, answer: Any, expected: Any, hint: str = ""
                 ) -> CheckResult:
    """Right when equal (sets and sequences compared as sets)."""
    if isinstance(expected, set | frozenset):
        answer = set(answer) if isinstance(answer, Sequence | set | frozenset) else answer
    if answer == expected:
        return right(label)
    return wrong(label, f"{what} is not what the data give{': ' + hint if hint else ''}")


def first_wrong(*results: CheckResult) -> CheckResult:
    """The first result that is not right (wrong before close), else right."""
    bad = [r for r in results if not r.right]
    bad.sort(key=lambda r: r.verdict is not Verdict.WRONG)
    return bad[0] if bad else results[0]


def exercise_table(chapter: str) -> Any:
    """The chapter's checked exercises (label, difficulty, time budget, the form of the
    answer its check takes) as a pandas Styler: shown whole, where a DataFrame's HTML cuts
    the answer column at 50 characters. ``.data`` is the DataFrame."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    table = pd.DataFrame([{"exercise": e.label, "difficulty": e.difficulty,
                           "minutes": e.minutes, "answer (what check takes)": e.answer}
                          for e in exercises_of(chapter)])
    return table.style.hide(axis="index").set_properties(**{"text-align": "left"})


# ------------------------------------------------------------- 00: synthetic features

@exercise("ex-syn-bar", "00", "starter", 5,
          "int: planted features whose best decoder cosine is >= 0.8")
def _syn_bar(answer: Any, sae: Any, truth: Any) -> CheckResult:

    label, expected = "ex-syn-bar", int(recovery(sae.W_dec, truth, at=0.8).recovered.sum())
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
        return wrong(label, "the answer is a count of planted features (an int)")
    if answer == expected:
        return right(label)
    if abs(answer - expected) == 1:
        return CheckResult(label, Verdict.CLOSE, "off by one: is the bar inclusive (>= 0.8)?")
    more = answer > expected
    return wrong(label, f"the count is too {'high' if more else 'low'}: count planted "
                 "features (rows of truth.directions), each by its best latent, not latents")


@exercise("ex-syn-absorb", "00", "core", 10,
          "float: absorption_rate of the first parent for truth_sae(truth, "
          "absorbed=truth.hierarchy[:1]) on `test`")
def _syn_absorb(answer: Any, truth: Any, batch: Any) -> CheckResult:

    parent = truth.hierarchy[0][0]
    table = absorption_table(truth_sae(truth, truth.hierarchy[:1]), truth, batch)
    row = table[table.parent == f"feature {parent}"].iloc[0]
    return compare_number("ex-syn-absorb", "the absorption rate", answer,
                          float(row.absorption_rate), tol=0.005, close=0.05)


@exercise("ex-syn-superposition", "00", "stretch", 15,
          "float: FVE of the truth SAE when n_features = 2 × d_model (same spec otherwise, "
          "rows sample(truth, n_rows, seed=1))")
def _syn_superposition(answer: Any, spec: Any, n_rows: int) -> CheckResult:


    truth = plant(dataclasses.replace(spec, n_features=2 * spec.d_model))
    rows = sample(truth, n_rows, seed=1)
    return compare_number("ex-syn-superposition", "the FVE", answer,
                          score_sae(truth_sae(truth), truth, rows).fve, tol=0.002, close=0.03)


# ------------------------------------------------------------------ 01: caching

@exercise("ex-cache-layer", "01", "core", 15,
          "dict: reused (bool, is the existing cache reused?) and mean_norm ({block: mean "
          "‖x‖ on `batch`})")
def _cache_layer(answer: Any, key_now: str, key_other: str, model: Any, batch: Any
                 ) -> CheckResult:
    label = "ex-cache-layer"
    reused = compare_same(label, "reused", answer["reused"], key_now == key_other,
                          "the cache key hashes everything that determines the "
                          "activations, the hook included")
    keep = batch.keep.to(model.device)
    blocks = sorted(answer["mean_norm"])
    expected = {}
    # three of the answer's blocks (first, middle, last): a forward each, not a depth sweep
    for block in dict.fromkeys([blocks[0], blocks[len(blocks) // 2], blocks[-1]]):
        x = model.resid(batch.tokens, batch.attention_mask, int(block))[keep].float().cpu()
        expected[block] = float(x.norm(dim=1).mean())
    given = {b: answer["mean_norm"][b] for b in expected}
    norms = compare_numbers(label, "mean ‖x‖", given, expected, tol=1e-3, close=0.05,
                            relative=True)
    return first_wrong(reused, norms)


@exercise("ex-cache-corpus", "01", "core", 10,
          "dict: {corpus: median tokens per document} over each corpus's first `n_docs` "
          "eval documents")
def _cache_corpus(answer: Any, tokenizer: Any, corpora: Sequence[str], n_docs: int = 32
                  ) -> CheckResult:


    expected = {}
    for name in corpora:
        docs = itertools.islice(registry.iter_documents(name, "eval"), n_docs)
        expected[name] = float(statistics.median(
            len(tokenizer(d.text)["input_ids"]) for d in docs))
    return compare_numbers("ex-cache-corpus", "median tokens", answer, expected, tol=1e-9,
                           close=0.1, relative=True)


# ------------------------------------------------------------------ 02: training

@exercise("ex-train-target", "02", "core", 15,
          "dict: sae ((train corpus, target L0, replicate) furthest from its target as a "
          "ratio), direction ('above' or 'below') and settled ({(corpus, target, "
          "replicate): tokens after which L0 stays within 10% of its final value})")
def _train_target(answer: Any, final: Any, curves: Any) -> CheckResult:
    label = "ex-train-target"
    off = (final.l0 / final["target L0"] - 1).abs()
    worst = final.loc[off.idxmax()]
    tied = final[off >= off.max() - 1e-12]
    saes = {(r["train corpus"], float(r["target L0"]), int(r["seed replicate"]))
            for _, r in tied.iterrows()}
    sae = tuple(answer["sae"])
    which = (right(label) if (sae[0], float(sae[1]), int(sae[2])) in saes else
             wrong(label, "another SAE ends further from its target: compare |L0/target − 1|"))
    direction = compare_same(label, "the direction", answer["direction"],
                             "above" if worst.l0 > worst["target L0"] else "below")
    settled = {}
    for (corpus, target, rep), g in curves.groupby(["train_corpus", "l0_target",
                                                     "replicate"]):
        last = g.l0.iloc[-1]
        off_rows = ((g.l0 - last).abs() > 0.1 * last).to_numpy().nonzero()[0]
        i = min(off_rows.max() + 1 if len(off_rows) else 0, len(g) - 1)
        settled[(corpus, float(target), int(rep))] = float(g.tokens.iloc[i])
    given = {(c, float(t), int(r)): v for (c, t, r), v in answer["settled"].items()}
    return first_wrong(which, direction, compare_numbers(
        label, "settled after (tokens)", given, settled, tol=0, close=0.25, relative=True))


@exercise("ex-train-third", "02", "core", 10,
          "set of SAE ids (e.g. 'wordnet/seed_0/l0_8') that the rerun would train")
def _train_third(answer: Any, cfg_third: Any) -> CheckResult:

    expected = {sae for sae, path in sae_dirs(cfg_third).items()
                if not (path / CFG_FILENAME).exists()}
    return compare_same("ex-train-third", "the set of SAEs to train", set(answer), expected,
                        "a finished SAE is reused when its folder holds it; only the new "
                        "corpus's folders are empty")


# ------------------------------------------------------------ 03: fidelity

def _medical_gaps(gaps: Any, medical: str, broad: str, metrics: Sequence[str]) -> Any:
    """The medical-minus-broad gap rows of ``metrics`` on medical text."""

    rows = oriented_gaps(gaps, medical, broad)
    return rows[(rows.eval_corpus == medical) & rows.metric.isin(metrics)]


def _sign_hint(label: str, given: Mapping, expected: Mapping, result: CheckResult
               ) -> CheckResult:
    """A wrong answer that is the expected one negated says so (a gap taken the other way
    round is the usual slip)."""
    if result.verdict is Verdict.WRONG and all(
            isinstance(given.get(k), numbers.Real) and v and math.isclose(
                given[k], -v, rel_tol=1e-6) for k, v in expected.items()):
        return wrong(label, "every value has the wrong sign: the gap is medical minus broad")
    return result


@exercise("ex-fidelity-target", "03", "core", 10,
          "dict: gaps ({(target L0, metric): medical − broad gap on medical text}, metrics "
          "fve and delta_ce, the smallest and largest target) and exclude_zero (the set of "
          "those keys whose interval excludes 0)")
def _fidelity_target(answer: Any, gaps: Any, medical: str, broad: str) -> CheckResult:
    label = "ex-fidelity-target"
    rows = _medical_gaps(gaps, medical, broad, ["fve", "delta_ce"])
    rows = rows[rows.basis == "l0_target"]
    rows = rows[rows.l0_target.isin([rows.l0_target.min(), rows.l0_target.max()])]
    expected = {(float(r.l0_target), r.metric): float(r.value) for r in rows.itertuples()}
    given = {(float(t), m): v for (t, m), v in answer["gaps"].items()}
    values = _sign_hint(label, given, expected, compare_numbers(
        label, "the gap", given, expected, tol=1e-6, close=0.01, relative=True))
    excluded = {(float(r.l0_target), r.metric) for r in rows.itertuples()
                if r.low > 0 or r.high < 0}
    chosen = {(float(t), m) for t, m in answer["exclude_zero"]}
    return first_wrong(values, compare_same(
        label, "the set of intervals that exclude 0", chosen, excluded,
        "an interval excludes 0 when its low end is above 0 or its high end below"))


@exercise("ex-fidelity-transfer", "03", "core", 10,
          "dict: lost ({(train corpus, target L0): FVE on its own corpus − FVE on the "
          "other}) and better (the train corpus with the smaller mean loss)")
def _fidelity_transfer(answer: Any, results_mean: Any, medical: str, broad: str
                       ) -> CheckResult:

    label = "ex-fidelity-transfer"
    other = {medical: broad, broad: medical}
    expected = {}
    for corpus in (medical, broad):
        for target in sorted(set(results_mean[results_mean.train_corpus == corpus]
                                 .l0_target)):
            expected[(corpus, float(target))] = (
                metric_value(results_mean, "fve", corpus, corpus, target)
                - metric_value(results_mean, "fve", corpus, other[corpus], target))
    given = {(c, float(t)): v for (c, t), v in answer["lost"].items()}
    lost = _sign_hint(label, given, expected, compare_numbers(
        label, "the FVE lost", given, expected, tol=1e-6, close=0.01, relative=True))
    mean_loss = {c: sum(v for (k, _), v in expected.items() if k == c) for c in other}
    better = compare_same(label, "the family that transfers better", answer["better"],
                          min(mean_loss, key=mean_loss.get),
                          "the smaller mean FVE lost over the target L0s")
    return first_wrong(lost, better)


@exercise("ex-fidelity-baselines", "03", "core", 10,
          "dict: {eval corpus: (CE(zero) − CE(clean)) ÷ (CE(mean ablation) − CE(clean))}")
def _fidelity_baselines(answer: Any, results_mean: Any) -> CheckResult:
    label = "ex-fidelity-baselines"
    wide = results_mean[results_mean.metric.isin(["ce_zero", "ce_mean_ablation",
                                                   "ce_clean"])]
    expected = {}
    # the baselines do not depend on the SAE: the first family scored on each corpus
    for corpus, g in wide.groupby("eval_corpus"):
        first = g[(g.train_corpus == g.train_corpus.iloc[0])
                  & (g.l0_target == g.l0_target.iloc[0])].set_index("metric").value
        expected[corpus] = float((first.ce_zero - first.ce_clean)
                                 / (first.ce_mean_ablation - first.ce_clean))
    result = compare_numbers(label, "the ratio of damages", answer, expected, tol=1e-3,
                             close=0.05, relative=True)
    if result.verdict is Verdict.WRONG and all(
            answer[k] and math.isclose(1 / answer[k], v, rel_tol=1e-3)
            for k, v in expected.items()):
        return wrong(label, "the ratio is upside down: zero-ablation damage over "
                     "mean-ablation damage")
    return result


# ----------------------------------------------------------- 04: dark matter

@exercise("ex-dm-decomp", "04", "starter", 10,
          "dict: {(SAE id, eval corpus): fvu_linear ÷ fvu_sae}, the linear share of the "
          "error, from the tidy table `dm`")
def _dm_decomp(answer: Any, dm: Any) -> CheckResult:
    label = "ex-dm-decomp"
    metric = dm.metric.str.removeprefix("dark_matter.")
    parts = dm.assign(metric=metric).pivot_table(index=["sae_id", "eval_corpus"],
                                                 columns="metric", values="value")
    expected = (parts.fvu_linear / parts.fvu_sae).to_dict()
    result = compare_numbers(label, "the linear share", answer, expected, tol=1e-6,
                             close=0.01, relative=True)
    nonlinear = (parts.fvu_nonlinear / parts.fvu_sae).to_dict()
    if result.verdict is Verdict.WRONG and compare_numbers(
            label, "", answer, nonlinear, tol=1e-6, relative=True).right:
        return wrong(label, "that is the nonlinear share: fvu_nonlinear ÷ fvu_sae")
    return result


@exercise("ex-dm-norm", "04", "core", 10,
          "dict: {(basis, point): medical − broad gap of dark_matter.r2_norm on medical "
          "text}, basis 'l0_target' (point: the target) and 'fve' (point: the grid FVE)")
def _dm_norm(answer: Any, gaps: Any, medical: str, broad: str) -> CheckResult:
    label = "ex-dm-norm"
    rows = _medical_gaps(gaps, medical, broad, ["dark_matter.r2_norm"])
    expected = {}
    for r in rows.itertuples():
        if r.basis in ("l0_target", "fve"):
            expected[(r.basis, round(float(getattr(r, r.basis)), 6))] = float(r.value)
    given = {(b, round(float(p), 6)): v for (b, p), v in answer.items()}
    return _sign_hint(label, given, expected, compare_numbers(
        label, "the R²(‖e‖²) gap", given, expected, tol=1e-6, close=0.01, relative=True))


@exercise("ex-dm-tokens", "04", "core", 10,
          "int: the eval.n_tokens that gives ten fit tokens per regression input (the "
          "current budget when it already does)")
def _dm_tokens(answer: Any, n_tokens: int, fit_tokens: Sequence[float], d_model: int
               ) -> CheckResult:
    ratio = float(min(fit_tokens)) / (d_model + 1)
    expected = n_tokens * max(1.0, 10 / ratio)
    if isinstance(answer, numbers.Real) and not isinstance(answer, bool) and answer < n_tokens:
        return wrong("ex-dm-tokens", "fewer tokens than now cannot give more fit tokens")
    return compare_number("ex-dm-tokens", "the token budget", answer, expected, tol=0.01,
                          close=0.1, relative=True)


# ----------------------------------------------------------- 05: feature case studies

@exercise("ex-feat-concept", "05", "core", 15,
          "dict: concept (the most frequent 'chapter:...' concept not in case_concepts) and "
          "latents ({SAE: its latent with the highest AUROC for it})")
def _feat_concept(answer: Any, labels: Sequence[dict], doc_max: Mapping[str, Any],
                  case_concepts: Sequence[str]) -> CheckResult:



    label = "ex-feat-concept"
    counts = Counter(c for lab in labels for c in document_concepts(lab, DEFAULT_CONCEPT_KEYS)
                     if c.startswith("chapter:") and c not in case_concepts)
    top = max(counts.values())
    concept = answer["concept"]
    if counts.get(concept) != top:
        return wrong(label, f"{concept!r} is not the most frequent chapter outside "
                     "case_concepts among the held-out documents")
    for sae, latent in answer["latents"].items():
        au = torch.nan_to_num(concept_aurocs(doc_max[sae], labels, concept)[0], nan=0.0)
        if float(au[int(latent)]) < float(au.max()) - 1e-9:  # ties: any best latent counts
            return wrong(label, f"{sae}: latent {latent} is not the one with the highest "
                         "AUROC for that concept")
    return compare_same(label, "the SAEs answered for", set(answer["latents"]), set(doc_max))


@exercise("ex-feat-phrase", "05", "starter", 10,
          "dict: {SAE: latents among its k most active on the new phrase that were also "
          "among those found on the original phrase}")
def _feat_phrase(answer: Any, saes: Mapping[str, Any], x_new: Any,
                 found: Mapping[str, Sequence[tuple[int, float]]], k: int = 5) -> CheckResult:

    label = "ex-feat-phrase"
    expected = {c: {j for j, _ in search_latents(s, x_new, k=k)} & {j for j, _ in found[c]}
                for c, s in saes.items()}
    if set(answer) != set(expected):
        return wrong(label, "answer for each SAE in `saes`, keyed by its name")
    for c in expected:
        result = compare_same(label, f"the shared latents of {c}", set(answer[c]),
                              expected[c], f"take the top {k} of search_latents on the new "
                              "phrase and intersect with `found`")
        if not result.right:
            return result
    return right(label)


@exercise("ex-feat-bar", "05", "starter", 5,
          "dict: {SAE: {bar: share of its latents with held-out AUROC >= bar}}")
def _feat_bar(answer: Any, alignment: Mapping[str, Any], bars: Sequence[float]
              ) -> CheckResult:
    label = "ex-feat-bar"
    if set(answer) != set(alignment):
        return wrong(label, "answer for each SAE in `alignment`")
    for sae, al in alignment.items():
        expected = {b: float((al.auroc >= b).float().mean()) for b in bars}
        result = compare_numbers(label, f"{sae}'s shares", answer[sae], expected, tol=1e-6,
                                 close=0.02)
        if not result.right:
            return result
    return right(label)


# ------------------------------------------------------------------- 06: autointerp

@exercise("ex-ai-best", "06", "starter", 5,
          "list of (SAE, replicate, latent): the three latents with the highest detection "
          "AUROC")
def _ai_best(answer: Any, per_latent: Any) -> CheckResult:
    label = "ex-ai-best"
    scored = per_latent.dropna(subset=["detection_auroc"])
    n = min(3, len(scored))
    bar = scored.detection_auroc.nlargest(n).min() if n else float("inf")
    # a latent is its SAE family's, its seed replicate's and its index: two seeds' SAEs
    # can both score their latent 12
    allowed = {(r.SAE, int(r.replicate), int(r.latent))
               for r in scored[scored.detection_auroc >= bar].itertuples()}  # ties count
    given = [(s, int(k), int(j)) for s, k, j in answer]
    if len(given) != n or len(set(given)) != n:
        return wrong(label, f"list {n} different (SAE, replicate, latent) triples")
    if not set(given) <= allowed:
        return wrong(label, "a latent in the list has a lower detection AUROC than three "
                     "others (latents without a score do not count)")
    return right(label)


@exercise("ex-ai-budget", "06", "core", 10,
          "int: LLM requests of the autointerp.demo=false budget over all scored SAEs, no "
          "retries")
def _ai_budget(answer: Any, full: Any, n_saes: int) -> CheckResult:
    windows = 2 * full.n_score * (2 if full.fuzzing else 1)  # latent's + silent, fuzzing x2
    expected = n_saes * full.n_latents * (1 + 2 * windows)  # explanation + 2 per window
    return compare_number("ex-ai-budget", "the request count", answer, expected, tol=0,
                          close=0.25, relative=True)


# ------------------------------------------------------------------- 07: damage

@exercise("ex-damage-recovered", "07", "starter", 10,
          "dict: {SAE: {'vs zero': float, 'vs mean': float}} recomputed from the CEs")
def _damage_recovered(answer: Any, reports: Mapping[str, Any]) -> CheckResult:
    label = "ex-damage-recovered"
    if set(answer) != set(reports):
        return wrong(label, "answer for each SAE in `reports`")
    for name, r in reports.items():
        expected = {"vs zero": r.loss_recovered_vs_zero, "vs mean": r.loss_recovered_vs_mean}
        result = compare_numbers(label, f"{name}'s loss recovered", answer[name], expected,
                                 tol=1e-6, close=0.01)
        if not result.right:
            return result
    return right(label)


@exercise("ex-damage-where", "07", "core", 10,
          "dict: {(SAE, breakdown): label of the bin with the largest share of ΔCE}, "
          "breakdowns by_position, by_norm_decile, by_frequency")
def _damage_where(answer: Any, reports: Mapping[str, Any]) -> CheckResult:

    label = "ex-damage-where"
    expected = {}
    for field in ("by_position", "by_norm_decile", "by_frequency"):
        for name, g in bins_frame(reports, field).groupby("sae"):
            expected[(name, field)] = set(g.bin[g.share >= g.share.max() - 1e-12])
    if set(answer) != set(expected):
        return wrong(label, "answer for every (SAE, breakdown) pair")
    for key, bins in expected.items():
        if answer[key] not in bins:
            return wrong(label, f"{key}: another bin carries a larger share")
    return right(label)


# ------------------------------------------------------------ 08: the learning curve

@exercise("ex-curve-converged", "08", "core", 10,
          "dict: {(train corpus, metric): change between the last two budgets ÷ change "
          "between the first two}, metrics fve and delta_ce, on the domain corpus")
def _curve_converged(answer: Any, families: Any, domain: str) -> CheckResult:
    fam = families[(families.eval_corpus == domain)
                   & families.metric.isin(["fve", "delta_ce"])]
    expected = {}
    for (corpus, metric), g in fam.groupby(["train_corpus", "metric"]):
        v = g.sort_values("tokens").value.to_numpy()
        expected[(corpus, metric)] = float((v[-1] - v[-2]) / (v[1] - v[0]))
    return compare_numbers("ex-curve-converged", "the ratio of changes", answer, expected,
                           tol=1e-3, close=0.05, relative=True)


@exercise("ex-curve-l0", "08", "starter", 5,
          "dict: {(tokens, train corpus): held-out L0 / target − 1} on the domain corpus")
def _curve_l0(answer: Any, families: Any, domain: str) -> CheckResult:
    l0 = families[(families.eval_corpus == domain) & (families.metric == "l0")]
    expected = {(int(r.tokens), r.train_corpus): float(r.value / r.l0_target - 1)
                for r in l0.itertuples()}
    given = {(int(t), c): v for (t, c), v in answer.items()}
    return compare_numbers("ex-curve-l0", "the distance from target", given, expected,
                           tol=1e-4, close=0.02)


# ------------------------------------------------------------ 09: domain or home field

def _typical_fve_gaps(gaps: Any, first: str, second: str, eval_corpus: str) -> dict:
    """{target L0: first − second family's typical-token FVE gap on ``eval_corpus``}."""

    rows = oriented_gaps(gaps, first, second)
    rows = rows[(rows.metric == "fve_typical") & (rows.basis == "l0_target")
                & (rows.eval_corpus == eval_corpus)]
    return {float(r.l0_target): float(r.value) for r in rows.itertuples()}


@exercise("ex-home-did", "09", "core", 10,
          "dict: {target L0: medical's home advantage − broad's home advantage in "
          "fve_typical} (each side's SAE minus the other's, on its own text)")
def _home_did(answer: Any, gaps: Any, medical: str, broad: str) -> CheckResult:
    own = _typical_fve_gaps(gaps, medical, broad, medical)
    theirs = _typical_fve_gaps(gaps, broad, medical, broad)
    expected = {t: own[t] - theirs[t] for t in own if t in theirs}
    given = {float(t): v for t, v in answer.items()}
    result = compare_numbers("ex-home-did", "the difference-in-differences", given, expected,
                             tol=1e-6, close=0.01, relative=True)
    summed = {t: own[t] + theirs[t] for t in expected}
    if result.verdict is Verdict.WRONG and compare_numbers(
            "ex-home-did", "", given, summed, tol=1e-6, relative=True).right:
        return wrong("ex-home-did", "that adds the broad side's home advantage: subtract it "
                     "(each advantage is the home SAE minus the visitor on home text)")
    return result


@exercise("ex-home-mix", "09", "core", 10,
          "dict: {(mixed corpus, target L0): the medical SAE's typical-token FVE gap over "
          "the mixed SAE ÷ its gap over the broad SAE, on medical text}")
def _home_mix(answer: Any, gaps: Any, medical: str, broad: str, mixed: Sequence[str]
              ) -> CheckResult:
    label = "ex-home-mix"
    over_broad = _typical_fve_gaps(gaps, medical, broad, medical)
    expected = {}
    for name in mixed:
        for t, gap in _typical_fve_gaps(gaps, medical, name, medical).items():
            if t in over_broad:
                expected[(name, t)] = gap / over_broad[t] if over_broad[t] else math.nan
    given = {(m, float(t)): v for (m, t), v in answer.items()}
    result = compare_numbers(label, "the share of the gap", given, expected, tol=1e-4,
                             close=0.02, relative=True)
    if result.verdict is Verdict.WRONG and all(
            given.get(k) and math.isclose(1 / given[k], v, rel_tol=1e-4)
            for k, v in expected.items()):
        return wrong(label, "the ratio is upside down: the gap over the mixed SAE divided by "
                     "the gap over the broad SAE")
    return result


# ------------------------------------------------------ 10: architectures and widths

@exercise("ex-width-crossover", "10", "starter", 10,
          "dict: below and width (the crossover lies in (below, width], × d_model) and "
          "estimate (where the interval's paper-side end reaches 0, on log2 width)")
def _width_crossover(answer: Any, gaps: Mapping[float, Interval], sign: int) -> CheckResult:
    label, found = "ex-width-crossover", crossover(dict(gaps), sign)
    if found.status != CROSSOVER:
        return wrong(label, f"by the declared rule these gaps have no bracketed crossover "
                     f"({found.status})")
    bracket = compare_same(label, "the bracket (below, width)",
                           (float(answer["below"]), float(answer["width"])),
                           (float(found.below), float(found.width)),
                           "walk down from the largest width while the interval holds 0 "
                           "or lies on the other side of it")
    estimate = compare_number(label, "the estimate", answer["estimate"], found.estimate,
                              tol=1e-3, close=0.02, relative=True)
    if estimate.verdict is Verdict.WRONG:
        points = crossover({w: Interval(iv.value, iv.value, iv.value)
                            for w, iv in gaps.items()}, sign)
        if points.estimate is not None and math.isclose(answer["estimate"], points.estimate,
                                                        rel_tol=1e-3):
            return wrong(label, "that is where the point value reaches 0: the rule follows "
                         "the interval's end nearer 0 (the lower end when a positive gap "
                         "favours the domain SAE)")
    return first_wrong(bracket, estimate)


@exercise("ex-width-slope", "10", "core", 15,
          "dict: slopes per doubling of the domain SAE's advantage (sign × gap) on log2 "
          "width: unweighted (ordinary least squares on the point values), weighted (the "
          "slope test's, 1/se² weights) and widened (weighted, the largest width's interval "
          "four times as wide)")
def _width_slope(answer: Any, gaps: Mapping[float, Interval], sign: int) -> CheckResult:
    label = "ex-width-slope"

    def slope(g: Mapping[float, Interval]) -> float:
        return width_trend(dict(g), sign).slope.value

    def stretched(iv: Interval, k: float) -> Interval:
        return Interval(iv.value, iv.value - k * (iv.value - iv.low),
                        iv.value + k * (iv.high - iv.value))

    # equal intervals give equal weights: the slope test's line is then the plain one
    even = {w: Interval(iv.value, iv.value - 0.01, iv.value + 0.01) for w, iv in gaps.items()}
    largest = max(gaps)
    expected = {"unweighted": slope(even), "weighted": slope(gaps),
                "widened": slope({**gaps, largest: stretched(gaps[largest], 4)})}
    result = compare_numbers(label, "the slope", answer, expected, tol=1e-3, close=0.02,
                             relative=True)
    if result.verdict is Verdict.WRONG and set(answer) == set(expected):
        for key in ("weighted", "widened"):
            off = not math.isclose(answer[key], expected[key], rel_tol=1e-3)
            if off and math.isclose(answer[key], expected["unweighted"], rel_tol=1e-3):
                return wrong(label, f"the {key} slope given is the unweighted one: the slope "
                             "test weights each width by 1/se², se = the interval's width / "
                             "(2 × 1.96)")
    return result
