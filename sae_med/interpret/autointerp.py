"""Automated interpretation: an LLM explains each latent, then a scorer tests the explanation.

For each sampled latent of an SAE over an activation cache:

1. **Explain** — the chat model reads the latent's top-activating windows (peak token in
   «guillemets») and its top logit-lens tokens and writes a short explanation.
2. **Detect** — on held-out windows (sampled across the latent's activation quantiles,
   from documents the explainer never saw) and as many windows where the latent is silent,
   the model answers whether the text matches the explanation. Accuracy and F1 per latent
   from the generated answers, and ``detection_auroc``: the AUROC, positives vs negatives,
   of the model's probability of answering yes (``p_yes``: P(yes) / (P(yes) + P(no)) for
   the first answer token, see :mod:`sae_med.interpret.chat`). The AUROC needs no threshold, so it
   still ranks texts when a weak model answers "no" to everything (accuracy 0.5, F1 0).
3. **Fuzz** (optional) — each held-out positive window twice, once with the tokens where
   the latent fires marked and once with as many random silent tokens marked; the model
   answers whether the marked tokens match the explanation (``fuzz_accuracy``,
   ``fuzz_f1``, and ``fuzz_auroc`` of p_yes, correctly vs randomly marked).

A response that cannot be parsed is retried ``max_retries`` times (the malformed answer and
a reminder of the format are appended to the conversation, since greedy decoding would
repeat itself) and then recorded as a failure: counted in ``n_failures``, kept in
``failed_responses`` and scored as a wrong answer, never dropped. Likewise a p_yes the
backend cannot give (an endpoint whose top tokens hold neither yes nor no) is counted in
``n_p_failures`` and scored as the wrong extreme (0 for a positive, 1 for a negative).

:func:`score_saes` spreads a training corpus's latents over its seed replicates, and
:func:`compare_scores` gives each corpus's mean score with a bootstrap 95% interval that
resamples seeds, then latents within each drawn seed, and the difference between two
corpora's SAEs (medical vs broad at matched L0). This module takes SAEs, cache and model
as given; on a whole run
(:func:`sae_med.experiment.stage_autointerp`) ``autointerp.demo`` (the default) swaps the
configured budget for the small :data:`DEMO_BUDGET`; ``autointerp.demo=false`` runs the
real comparison.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from sae_med.artifacts import atomic_path, derived_seed, write_json_atomic
from sae_med.cache.activations import ActivationCache
from sae_med.config import AutointerpConfig, Config, EvalConfig
from sae_med.interpret.chat import ChatBackend, Message, concurrency, concurrent_map
from sae_med.interpret.features import (
    PEAK_MARK,
    LatentActs,
    Window,
    encode_cache,
    logit_lens,
    quantile_windows,
    render_marked,
    top_windows,
    window_at,
)
from sae_med.layout import COMPARISON_NAME, CONFIG_NAME, LATENTS_NAME, autointerp_dir
from sae_med.lm.model import LanguageModel
from sae_med.measure.bootstrap import bootstrap_mean, independent_difference
from sae_med.measure.metrics import auroc
from sae_med.sae.base import LinearSAE

log = logging.getLogger(__name__)

ANSWER_TOKENS = 3
"""Generation budget of a scorer answer: only its first word is read (:func:`parse_yes_no`),
and SmolLM2 otherwise goes on ("No, the text does not contain ...") at ~4x the cost."""


# ---------------------------------------------------------------------------- asking

class Asked(NamedTuple):
    value: Any
    """The parsed answer, or None when every attempt was malformed."""
    attempts: int
    failed: list[str]
    """Raw responses that could not be parsed (all of them when ``value`` is None)."""


def ask(chat: ChatBackend, messages: Sequence[Message], parse: Callable[[str], Any],
        max_retries: int, reminder: str, max_new_tokens: int | None = None) -> Asked:
    """Ask, parse, and on a malformed response retry up to ``max_retries`` times."""
    msgs, failed = list(messages), []
    for attempt in range(max_retries + 1):
        text = chat.chat(msgs, max_new_tokens)
        value = parse(text)
        if value is not None:
            return Asked(value, attempt + 1, failed)
        failed.append(text)
        msgs = msgs + [{"role": "assistant", "content": text},
                       {"role": "user", "content": reminder}]
    log.warning("no parsable answer after %d attempts; last: %r", max_retries + 1, failed[-1])
    return Asked(None, max_retries + 1, failed)


# --------------------------------------------------------------------------- prompts

EXPLAIN_SYSTEM = ("You study a neuron of a language model. You read text where it fires "
                  "and say in a few words what it detects.")
EXPLAIN_REMINDER = "Reply with one short phrase only, such as: words about fever."
DETECT_REMINDER = "Reply with one word: yes or no."


def explainer_messages(examples: Sequence[str], promoted: Sequence[str]) -> list[Message]:
    """Top windows (peak marked) and logit-lens tokens → one request for an explanation."""
    lines = "\n".join(f"{i + 1}. {e.strip()}" for i, e in enumerate(examples))
    tokens = ", ".join(repr(t.strip()) for t in promoted if t.strip())
    return [{"role": "system", "content": EXPLAIN_SYSTEM},
            {"role": "user", "content":
             f"The neuron fires most on the token in {PEAK_MARK.format('guillemets')} in these "
             f"texts:\n{lines}\n\n"
             f"It makes these next tokens more likely: {tokens}.\n\n"
             "In a few words, what does the neuron detect?"}]


_PREFIX = re.compile(r"^(?:explanation|answer|the neuron (?:detects|fires on)|it detects)\s*:?\s*",
                     re.IGNORECASE)


def parse_explanation(text: str) -> str | None:
    """First sentence of the first non-empty line, common lead-ins and quotes stripped, cut
    at 200 characters; None if nothing with letters is left."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = re.split(r"(?<=[a-z][.!?])\s", line, maxsplit=1)[0]
    line = _PREFIX.sub("", line).strip().strip("\"'`*").strip()
    return line[:200] if re.search(r"[A-Za-z]", line) else None


def detection_messages(explanation: str, text: str) -> list[Message]:
    return [{"role": "user", "content":
             f"Description: {explanation}\n\nText: {text.strip()}\n\n"
             "Does the text contain something that fits the description? Answer yes or no."}]


def fuzzing_messages(explanation: str, marked_text: str) -> list[Message]:
    return [{"role": "user", "content":
             f"Description: {explanation}\n\nIn this text some tokens are marked "
             f"{PEAK_MARK.format('like this')}:\n{marked_text.strip()}\n\nDo the marked "
             "tokens fit the description? "
             "Answer yes or no."}]


_YES_NO = re.compile(r"^\W*(yes|no|true|false|1|0)\b", re.IGNORECASE)


def parse_yes_no(text: str) -> bool | None:
    """``yes``/``true``/``1`` → True, ``no``/``false``/``0`` → False (the first word); else
    None."""
    m = _YES_NO.match(text)
    return None if m is None else m.group(1).lower() in ("yes", "true", "1")


# --------------------------------------------------------------------------- metrics

class Detection(NamedTuple):
    accuracy: float
    f1: float
    n_failures: int


def detection_metrics(labels: Sequence[bool], answers: Sequence[bool | None]) -> Detection:
    """Accuracy = correct / n and F1 = 2TP / (2TP + FP + FN), with every failed answer
    (None) scored as the wrong one (a positive missed, a negative claimed); NaN if empty."""
    if not labels:
        return Detection(math.nan, math.nan, 0)
    y = np.asarray(labels, dtype=bool)
    fails = np.array([a is None for a in answers])
    pred = np.where(fails, ~y, np.array([bool(a) for a in answers]))
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    denom = 2 * tp + fp + fn
    return Detection(float((pred == y).mean()), 2 * tp / denom if denom else math.nan,
                     int(fails.sum()))


def p_yes_auroc(chat: ChatBackend, questions: Sequence[list[Message]], labels: Sequence[bool]
                ) -> tuple[float, int]:
    """(AUROC of ``chat.p_yes`` over ``questions``, positives vs negatives; the number of
    questions without a p_yes, each scored as the wrong extreme: 0 if positive, 1 if not).
    Questions are asked concurrently when the backend allows it."""
    ps = concurrent_map(chat.p_yes, questions, concurrency(chat))
    fails = sum(p is None for p in ps)
    filled = [float(not y) if p is None else p for p, y in zip(ps, labels, strict=True)]
    return (auroc([p for p, y in zip(filled, labels, strict=True) if y],
                  [p for p, y in zip(filled, labels, strict=True) if not y]), fails)


# ------------------------------------------------------------------- window sampling

def held_out_positives(acts: LatentActs, cache: ActivationCache, latent: int, n: int,
                       exclude_docs: set[int], seed: int) -> list[Window]:
    """``n`` windows spread over the activation quantiles, none from ``exclude_docs``."""
    qs = tuple(np.linspace(0.1, 0.9, n).round(3))
    by_q = quantile_windows(acts, cache, latent, qs, per=3, seed=seed)
    out, seen = [], set(exclude_docs)
    for rank in range(3):  # the first pick of every quantile, then the second, ...
        for q in qs:
            if rank < len(by_q[q]) and by_q[q][rank].doc_index not in seen:
                out.append(by_q[q][rank])
                seen.add(by_q[q][rank].doc_index)
    return sorted(out[:n], key=lambda w: w.activation)


def silent_windows(acts: LatentActs, cache: ActivationCache, latent: int, n: int,
                   seed: int, tries: int = 200) -> list[Window]:
    """Up to ``n`` windows (random centres) on none of whose tokens ``latent`` fires."""
    info = cache.tokens()
    gen = np.random.default_rng(seed)
    dense: dict[int, Tensor] = {}
    out, used = [], set()
    for row in gen.integers(0, acts.n_rows, size=tries * n).tolist():
        w = window_at(acts, info, row, latent, 30, 5, dense)
        if max(w.values) == 0 and (w.doc_index, w.position) not in used:
            out.append(w)
            used.add((w.doc_index, w.position))
            if len(out) == n:
                break
    return out


def pick_latents(acts: LatentActs, cache: ActivationCache, n: int, min_docs: int, seed: int,
                 max_rate: float = 0.2) -> list[int]:
    """``n`` latents drawn at random among those firing in at least ``min_docs`` documents
    and on at most ``max_rate`` of tokens (denser ones leave no silent windows to score
    against)."""
    doc = cache.tokens().doc_index
    n_docs = int(doc.max()) + 1
    pairs = torch.unique(acts.latents * n_docs + doc[acts.rows])
    docs_per_latent = torch.bincount(pairs // n_docs, minlength=acts.d_sae)
    ok = (docs_per_latent >= min_docs) & (acts.firing_rate() <= max_rate)
    eligible = torch.nonzero(ok).flatten().numpy()
    if len(eligible) < n:
        log.warning("only %d latents fire in >= %d documents on <= %.0f%% of tokens (%d "
                    "wanted)", len(eligible), min_docs, 100 * max_rate, n)
    gen = np.random.default_rng(seed)
    return sorted(gen.choice(eligible, size=min(n, len(eligible)), replace=False).tolist())


# ------------------------------------------------------------------------ the pipeline

@dataclasses.dataclass(frozen=True)
class LatentScore:
    latent: int
    explanation: str
    """Empty when the explainer failed (then the scores are NaN)."""
    firing_rate: float
    n_positive: int
    n_negative: int
    detection_auroc: float
    """AUROC of p_yes on the held-out positives vs negatives (0.5: chance)."""
    accuracy: float
    """Detection accuracy (generated answers) on the balanced held-out windows."""
    f1: float
    fuzz_auroc: float
    """AUROC of p_yes, correctly vs randomly marked (NaN unless fuzzing is on)."""
    fuzz_accuracy: float
    """Fuzzing accuracy (NaN unless fuzzing is on)."""
    fuzz_f1: float
    n_calls: int
    """Model requests made for this latent (generations, retries and p_yes requests)."""
    n_failures: int
    """Questions (explainer + scorers) left without a parsable answer after all retries."""
    failed_responses: tuple[str, ...]
    """Every malformed response, retried ones included."""
    n_p_failures: int
    """p_yes requests the backend could not answer (scored as the wrong extreme)."""


def _fuzz_marks(w: Window, gen: np.random.Generator) -> tuple[set[int], set[int]]:
    active = [i for i, v in enumerate(w.values) if v > 0]
    right = set(sorted(active, key=lambda i: -w.values[i])[:3])
    silent = [i for i, v in enumerate(w.values) if v == 0] or list(range(len(w.tokens)))
    wrong = set(gen.choice(silent, size=min(len(right), len(silent)), replace=False).tolist())
    return right, wrong


class _Tally:
    """One latent's questions to the chat model: asked, with the calls and malformed
    responses counted."""

    def __init__(self, chat: ChatBackend, cfg: AutointerpConfig):
        self.chat, self.cfg = chat, cfg
        self.calls, self.failed = 0, []

    def record(self, got: Asked) -> Any:
        self.calls += got.attempts
        self.failed.extend(got.failed)
        return got.value

    def answers(self, questions: list[list[Message]]) -> list[bool | None]:
        """Yes/no answers, asked concurrently when the backend allows it, kept in order."""
        got = concurrent_map(lambda q: ask(self.chat, q, parse_yes_no, self.cfg.max_retries,
                                           DETECT_REMINDER, ANSWER_TOKENS),
                             questions, concurrency(self.chat))
        return [self.record(g) for g in got]

    def detect(self, questions: Questions) -> Detected:
        """Answers scored against the labels, the p(yes) AUROC and its failed requests."""
        answers = self.answers(questions.messages)
        auroc, p_fails = p_yes_auroc(self.chat, questions.messages, questions.labels)
        self.calls += len(questions.messages)
        return Detected(detection_metrics(questions.labels, answers), auroc, p_fails)


class Questions(NamedTuple):
    """Yes/no questions to the scorer and the answer each should get."""

    messages: list[list[Message]]
    labels: list[bool]


class Detected(NamedTuple):
    """A set of questions scored."""

    detection: Detection
    auroc: float
    """AUROC of p(yes) against the labels."""
    p_failures: int


def score_latent(sae: LinearSAE, acts: LatentActs, cache: ActivationCache, tokenizer,
                 unembed: Float[Tensor, "d_model d_vocab"], chat: ChatBackend, latent: int,
                 cfg: AutointerpConfig) -> LatentScore:
    """Explain one latent and score the explanation (see the module docstring)."""
    seed = derived_seed(cfg.seed, "windows", latent)
    tops = top_windows(acts, cache, latent, k=cfg.n_windows)
    lens = logit_lens(sae, unembed, tokenizer, latent, k=8)
    examples = [w.render(tokenizer) for w in tops]
    tally = _Tally(chat, cfg)
    explanation = tally.record(ask(chat, explainer_messages(examples, lens.top_tokens),
                                   parse_explanation, cfg.max_retries, EXPLAIN_REMINDER,
                                   cfg.max_new_tokens))
    rate = float((acts.latents == latent).sum()) / acts.n_rows
    n_fail_expl = int(explanation is None)
    pos = held_out_positives(acts, cache, latent, cfg.n_score,
                             {w.doc_index for w in tops}, seed)
    neg = silent_windows(acts, cache, latent, len(pos), seed)
    pos = pos[:len(neg)]  # balanced, even if the latent is rarely silent
    nan = math.nan
    base = {"latent": latent, "firing_rate": rate, "n_positive": len(pos),
            "n_negative": len(neg)}
    if explanation is None:
        return LatentScore(**base, explanation="", detection_auroc=nan, accuracy=nan, f1=nan,
                           fuzz_auroc=nan, fuzz_accuracy=nan, fuzz_f1=nan, n_calls=tally.calls,
                           n_failures=n_fail_expl, failed_responses=tuple(tally.failed),
                           n_p_failures=0)
    questions = [detection_messages(explanation, render_marked(w.tokens, set(), tokenizer))
                 for w in pos + neg]
    det, det_auroc, p_fails = tally.detect(
        Questions(questions, [True] * len(pos) + [False] * len(neg)))
    fuzz, fuzz_auroc = Detection(nan, nan, 0), nan
    if cfg.fuzzing and pos:
        fuzz, fuzz_auroc, fuzz_p_fails = tally.detect(_fuzz_questions(
            explanation, pos, tokenizer, derived_seed(cfg.seed, "fuzz", latent)))
        p_fails += fuzz_p_fails
    return LatentScore(**base, explanation=explanation, detection_auroc=det_auroc,
                       accuracy=det.accuracy, f1=det.f1, fuzz_auroc=fuzz_auroc,
                       fuzz_accuracy=fuzz.accuracy, fuzz_f1=fuzz.f1, n_calls=tally.calls,
                       n_failures=n_fail_expl + det.n_failures + fuzz.n_failures,
                       failed_responses=tuple(tally.failed), n_p_failures=p_fails)


def _fuzz_questions(explanation: str, pos: Sequence[Window], tokenizer: Any, seed: int
                    ) -> Questions:
    """Each positive window twice: its top tokens marked (yes), then as many silent ones
    (no)."""
    gen = np.random.default_rng(seed)
    questions, labels = [], []
    for w in pos:
        right, wrong = _fuzz_marks(w, gen)
        questions += [fuzzing_messages(explanation, render_marked(w.tokens, marks, tokenizer))
                      for marks in (right, wrong)]
        labels += [True, False]
    return Questions(questions, labels)


def interpret_sae(sae: LinearSAE, acts: LatentActs, cache: ActivationCache, tokenizer,
                  unembed: Float[Tensor, "d_model d_vocab"], chat: ChatBackend,
                  cfg: AutointerpConfig, latents: Sequence[int] | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Explain and score ``latents`` (default: ``cfg.n_latents`` sampled by
    :func:`pick_latents`); one row per latent, the columns of :class:`LatentScore`.
    Latents are scored concurrently when the backend takes concurrent requests (the rows
    do not depend on it: every request is at temperature 0 and kept in order)."""
    if latents is None:
        latents = pick_latents(acts, cache, cfg.n_latents, cfg.n_windows + cfg.n_score,
                               cfg.seed)
    bar = lambda it: tqdm(it, total=len(latents), desc="autointerp", disable=not progress)
    scored = concurrent_map(
        lambda j: score_latent(sae, acts, cache, tokenizer, unembed, chat, j, cfg),
        latents, concurrency(chat), bar)
    rows = [dataclasses.asdict(score) for score in scored]
    frame = pd.DataFrame(rows, columns=[f.name for f in dataclasses.fields(LatentScore)])
    n_fail = int(frame["n_failures"].sum())
    if n_fail:
        log.warning("%d questions had no parsable answer after retries (scored as wrong; "
                    "see the failed_responses column)", n_fail)
    n_p_fail = int(frame["n_p_failures"].sum())
    if n_p_fail:
        log.warning("%d p_yes requests got neither yes nor no among the top tokens (scored "
                    "as the wrong extreme in the AUROCs)", n_p_fail)
    return frame


# ------------------------------------------------------------------------- comparison

REPLICATE = "replicate"
"""The column of a latent table holding the seed replicate each latent was drawn from."""
METRICS = ("detection_auroc", "accuracy", "f1")
"""The per-latent scores :func:`compare_scores` is usually asked for, the lead one first."""
FUZZ_METRICS = ("fuzz_auroc", "fuzz_accuracy", "fuzz_f1")


def replicates_of(frame: pd.DataFrame) -> np.ndarray:
    """The seed replicate each row of a latent table was drawn from (its ``replicate``
    column); a table without one (written before latents were spread over seeds) is
    one replicate, 0."""
    if REPLICATE not in frame:
        return np.zeros(len(frame), dtype=np.int64)
    return frame[REPLICATE].to_numpy(dtype=np.int64)


def compare_scores(scores: dict[str, pd.DataFrame], metric: str = "accuracy",
                   n_boot: int = EvalConfig.bootstrap, seed: int = 0) -> pd.DataFrame:
    """Per SAE family (a training corpus's seed replicates): mean ``metric`` (any column
    of :class:`LatentScore` holding a score, e.g. ``detection_auroc``, ``accuracy``,
    ``fuzz_auroc``) over its latents with a bootstrap 95% interval from ``n_boot``
    replicates (a run's ``eval.bootstrap``; the default is that field's), and for two
    families the difference (first − second, each side resampled independently: the two
    families' latents are separate draws, not pairs).

    Each resample draws seeds, then latents within each drawn seed (the ``replicate``
    column, :func:`replicates_of`; :func:`~sae_med.measure.bootstrap.nested_mean_draws`),
    so the interval holds seed variance; a table from one seed (or without the column) is
    resampled over its latents alone.

    Latents without a score (explanation unparsable, no held-out windows, or fuzzing off)
    are left out of the mean and counted in ``n_unscored``. ``n_failures`` sums unparsable
    answers, ``n_p_failures`` (when the tables have it) p_yes requests left unanswered.
    """
    rows, samples = [], {}
    for name, frame in scores.items():
        scored = frame[metric].notna().to_numpy()
        vals = frame[metric].to_numpy(dtype=np.float64)[scored]
        groups = replicates_of(frame)[scored]
        mean, lo, hi = bootstrap_mean(vals, n_boot, seed, groups=groups)
        rows.append({"SAE": name, "n_latents": len(vals), "mean": mean, "ci_low": lo,
                     "ci_high": hi, "n_unscored": int(frame[metric].isna().sum()),
                     "n_failures": int(frame["n_failures"].sum()),
                     "n_p_failures": int(frame.get("n_p_failures", pd.Series([0])).sum())})
        samples[name] = (vals, groups)
    if len(scores) == 2 and all(len(v) for v, _ in samples.values()):
        (a, (va, ga)), (b, (vb, gb)) = samples.items()
        diff = independent_difference(va, vb, n_boot, seed, groups_a=ga, groups_b=gb)
        rows.append({"SAE": f"{a} − {b}", "n_latents": len(va) + len(vb),
                     "mean": diff.value, "ci_low": diff.low, "ci_high": diff.high,
                     **{k: rows[0][k] + rows[1][k]
                        for k in ("n_unscored", "n_failures", "n_p_failures")}})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------- on a whole run

DEMO_BUDGET: dict[str, Any] = {"n_latents": 2, "n_windows": 4, "n_score": 2,
                               "fuzzing": False, "max_new_tokens": 24}
"""What ``autointerp.demo`` runs: 2 latents per training corpus (spread over its seeds,
:func:`score_saes`), each explained from 4 windows and scored on 2 + 2 held-out windows
(~10 model calls per latent)."""


def run_budget(cfg: AutointerpConfig) -> AutointerpConfig:
    """``cfg`` with :data:`DEMO_BUDGET` applied when ``cfg.demo``, else ``cfg`` itself."""
    return dataclasses.replace(cfg, **DEMO_BUDGET) if cfg.demo else cfg


class RunScores(NamedTuple):
    scores: dict[str, pd.DataFrame]
    """Per training corpus, :func:`score_saes`' table for its seed replicates at the
    chosen L0."""
    l0: dict[str, float]
    """Each training corpus's SAEs' mean L0 at the end of training, over its seed
    replicates (the matched-L0 check)."""
    target: float
    eval_corpus: str
    budget: AutointerpConfig
    """The settings the scores were made with (:func:`run_budget` of the config's)."""


def split_latents(n: int, n_replicates: int) -> list[int]:
    """``n`` latents split as evenly as possible over ``n_replicates`` seeds, the first
    ones taking one more (replicates past ``n`` get none)."""
    if n_replicates < 1:
        raise ValueError("no SAE to draw latents from (0 seed replicates)")
    return [n // n_replicates + (r < n % n_replicates) for r in range(n_replicates)]


def score_saes(saes: Mapping[str, Sequence[LinearSAE]], cache: ActivationCache,
               model: LanguageModel, chat: ChatBackend, budget: AutointerpConfig,
               progress: bool = True) -> dict[str, pd.DataFrame]:
    """Per training corpus, ``budget.n_latents`` latents spread over the seed replicates
    of ``saes[corpus]`` (replicate r at index r; :func:`split_latents`), each replicate's
    drawn by :func:`pick_latents` on its own activations over ``cache`` (built from
    ``model``) and scored by :func:`interpret_sae`: one table per corpus, keyed like
    ``saes``, its :data:`REPLICATE` column saying which replicate each latent came from.
    The autointerp cost is the same for any number of seeds. The caller hands over SAEs,
    cache and model (the experiment layer: :func:`sae_med.experiment.stage_autointerp`);
    nothing here caches or trains."""
    unembed = model.W_U.cpu()  # (d_model, d_vocab)
    scores = {}
    for name, replicates in saes.items():
        frames = []
        for r, (sae, n) in enumerate(zip(replicates, split_latents(budget.n_latents,
                                                                   len(replicates)),
                                         strict=True)):
            if n == 0:
                continue
            acts = encode_cache(sae, cache, progress=False)
            log.info("autointerp: SAE %s, replicate %d (%d latents)", name, r, n)
            # interpret_sae draws the replicate's n latents (pick_latents) with the budget's
            # one draw seed: latent indices of separately trained SAEs are unrelated, and
            # with one replicate the draw is what it always was
            frame = interpret_sae(sae, acts, cache, model.tokenizer, unembed, chat,
                                  dataclasses.replace(budget, n_latents=n), progress=progress)
            frames.append(frame.assign(**{REPLICATE: r}))
        scores[name] = pd.concat(frames, ignore_index=True)
    log.info("autointerp: %d model calls, %d answered from %s", chat.misses, chat.hits,
             chat.path)
    return scores


def write_run_scores(cfg: Config, run: RunScores) -> Path:
    """Write ``run`` under ``{run}/autointerp/l0_{target}/`` (``.../demo_l0_{target}`` for
    the demo): ``latents.csv`` (one row per SAE and latent: its training corpus ``sae``,
    seed ``replicate`` and the corpus's mean ``l0``; a file from before the
    ``replicate`` column is one replicate, see :func:`replicates_of`), ``comparison.csv``
    (:func:`compare_scores` for each metric) and the resolved ``config.json``. Returns that
    folder."""
    out = autointerp_dir(cfg.run_path, run.target, run.budget.demo)
    latents = pd.concat([f.assign(sae=name, l0=run.l0[name]) for name, f in run.scores.items()],
                        ignore_index=True)
    metrics = [*METRICS, *(FUZZ_METRICS if run.budget.fuzzing else ())]
    comparison = pd.concat([compare_scores(run.scores, m, cfg.eval.bootstrap, cfg.seed)
                            .assign(metric=m) for m in metrics], ignore_index=True)
    for name, frame in ((LATENTS_NAME, latents), (COMPARISON_NAME, comparison)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    write_json_atomic(out / CONFIG_NAME, cfg.to_dict())
    for row in comparison.itertuples():
        log.info("autointerp %s %s: %.3f [%.3f, %.3f]", row.metric, row.SAE, row.mean,
                 row.ci_low, row.ci_high)
    return out
