"""The paper's claims as verdicts, per model and across model families.

A verdict is computed from a run's paired gap intervals (:func:`sae_med.measure.compare.verdict`),
unless the run's domain SAEs fail the quality bar (:func:`meets_quality_bar`);
a config's ``replications`` repeat the run on other models, and a claim *replicates* when
it gets the same verdict on every model. Whether a metric falls with L0 is judged from a
family's paired steps (:func:`sae_med.measure.compare.trend_verdict`). Gap and step tables are the
tidy ``gaps`` and ``steps`` frames of :func:`sae_med.measure.results.load_comparisons`.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sae_med.artifacts import stable_hash
from sae_med.config import EvalConfig
from sae_med.interpret.autointerp import compare_scores, replicates_of
from sae_med.measure import compare as comparison
from sae_med.measure.bootstrap import Interval, independent_difference, nested_mean_draws
from sae_med.measure.compare import (
    NOT_JUDGED,
    UNTESTED_AT_FVE,
    L0Trend,
    Verdict,
    trend_verdict,
    verdict,
)

if TYPE_CHECKING:
    from sae_med.config import Config
    from sae_med.measure.results import ComparisonTables


RULES_VERSION = 2
"""The version of every gap and contrast claim's rule (the concept claim's is one more).
Version 2: a matched-FVE grid point without an interval (every replicate outside the other
family's range) is untested rather than failed (:func:`~sae_med.measure.compare.verdict`),
so a claim whose matched points all lack one reads "no common FVE range", not "not
separable from FVE"; and :func:`claim_verdict` refuses a contrast claim (it judged the
domain gap in the contrast's metric instead). It changed no verdict of any recorded run
(none has such a point, and no report judged a contrast claim that way)."""


class Claim(NamedTuple):
    key: str
    text: str
    """The claim as the results summary states it."""
    metric: str
    """The gap metric judged (domain-trained minus broad-trained, on domain text)."""
    sign: int
    """+1: a larger value favours the domain SAE; -1: a smaller one."""
    matched_fve: bool
    """Also judged at matched FVE (metrics that depend on fidelity)."""
    sensitivity_of: str | None = None
    """For a sensitivity check, the key of the claim it re-runs another way: judged like
    a claim and shown, never counted as one."""
    version: int = 1
    """The version of the claim's rule (:func:`rule_fingerprint`): a rule changed after
    data were seen must say so by a new version (``tests/report/frozen_rules.json`` records every
    version's fingerprint, and a test fails on a change without one)."""

    @property
    def is_claim(self) -> bool:
        return self.sensitivity_of is None


CLAIMS = (
    Claim("fve", "The domain SAE explains more variance (FVE)", "fve", 1, False,
          version=RULES_VERSION),
    Claim("loss", "It recovers more loss when spliced in", "loss_recovered", 1, True,
          version=RULES_VERSION),
    Claim("dark_matter", "Its error (dark matter) is less linearly predictable",
          "dark_matter.r2_error_mean", -1, True, version=RULES_VERSION),
)
"""The paper's claims judged from reconstruction metrics (the concept claim is judged from
autointerp scores: :func:`concept_verdict`)."""
SENSITIVITY_CHECKS = (
    Claim("fve_typical", "Sensitivity check, not a claim: FVE without massive-activation "
          "tokens", "fve_typical", 1, False, sensitivity_of="fve", version=RULES_VERSION),
)
"""Checks of a claim under another choice (here: which tokens count), added after the
data were seen, so they can qualify a claim's verdict but never add to the claims
supported."""
DID_CLAIMS = tuple(
    Claim(f"did_{key}", f"The domain SAE's home advantage exceeds the broad SAE's "
          f"(difference-in-differences): {name}", metric, sign, matched,
          version=RULES_VERSION)
    for key, name, metric, sign, matched in (
        ("fve_typical", "typical-token FVE", "fve_typical", 1, False),
        ("fve", "FVE", "fve", 1, False),
        ("delta_ce", "ΔCE", "delta_ce", -1, True),
        ("loss", "loss recovered", "loss_recovered", 1, True),
        ("dark_matter", "R²(e)", "dark_matter.r2_error_mean", -1, True)))
"""Domain or home field, declared before the run that judges it: is the domain SAE's win at
home larger than the broad SAE's win at home? Judged from the ``did`` contrasts
(:class:`~sae_med.measure.compare.Contrast`): (domain − broad SAE on domain text) − (broad − domain
SAE on broad text), at every target L0 and, for metrics that depend on fidelity, at every
pair of matched-FVE grid points of equal rank. Pure distribution shift predicts equal home
advantages (a difference of 0); the capacity thesis predicts the domain's is larger."""
HOME_EXCESS_CLAIMS = tuple(
    Claim(f"home_excess_{key}", f"The domain's home advantage over the broad SAE exceeds a "
          f"placebo domain's: {name}", metric, sign, matched, version=RULES_VERSION)
    for key, name, metric, sign, matched in (
        ("fve_typical", "typical-token FVE", "fve_typical", 1, False),
        ("delta_ce", "ΔCE", "delta_ce", -1, True)))
"""Judged per placebo domain (another narrow definition corpus, ``configs/domains.yaml``)
from the ``home_excess`` contrasts: (domain − broad on domain text) − (placebo − broad on
placebo text). If medicine is special, its home advantage exceeds a placebo's; if any
narrow genre wins at home as much, the advantage is home field."""
CONCEPT = Claim("concept", "Its latents read as clinical concepts (autointerp detection "
                "AUROC)", "detection_auroc", 1, False, version=RULES_VERSION + 1)
"""The claim judged from autointerp scores rather than the run's gaps
(:func:`concept_verdict`); not a key of :func:`claim`, which looks up gap claims. Version
2: the interval resamples seed replicates, then latents within each (version 1 resampled
the latents of replicate 0 only). Version 3: the shared verdict's change below."""
CONCEPT_CLAIM = CONCEPT.text
DCE_BAR_NATS = 1.0
"""The quality bar: on the default config the domain SAE's ΔCE on held-out domain
text (nats per token, spliced minus clean loss) should be at most this."""


class BarDce(NamedTuple):
    """The ΔCE that :data:`DCE_BAR_NATS` is about."""

    l0_target: float
    """The run's largest target L0 (its densest, best-reconstructing SAEs)."""
    dce: Interval
    """The domain SAEs' across-seed mean ΔCE on held-out domain text (nats per token) and
    its 95% interval."""


def bar_dce(families: Any, domain: str) -> BarDce | None:
    """The ``domain`` SAEs' ΔCE on held-out ``domain`` text at the largest target L0, from
    a run's family rows; None when the run has none."""
    if families.empty:
        return None
    sel = families[(families.train_corpus == domain) & (families.eval_corpus == domain)
                   & (families.metric == "delta_ce") & (families.basis == "l0_target")]
    if sel.empty:
        return None
    row = sel.sort_values("l0_target").iloc[[-1]]
    return BarDce(float(row.l0_target.iloc[0]), row_intervals(row)[0])


def meets_quality_bar(families: Any, domain: str) -> bool:
    """Whether a run's SAEs are good enough for its gaps to be judged: their ΔCE
    (:func:`bar_dce`) is at most :data:`DCE_BAR_NATS` (a run without ΔCE rows has nothing
    to fail)."""
    at = bar_dce(families, domain)
    return at is None or at.dce.value <= DCE_BAR_NATS


def judged(v: Verdict, families: Any, domain: str) -> Verdict:
    """``v``, or :data:`~sae_med.measure.compare.NOT_JUDGED` when the run's SAEs fail the quality
    bar (:func:`meets_quality_bar`)."""
    return v if meets_quality_bar(families, domain) else NOT_JUDGED


def claim(key: str) -> Claim:
    """The claim or sensitivity check named ``key``; an error lists the valid keys."""
    claims = (*CLAIMS, *DID_CLAIMS, *HOME_EXCESS_CLAIMS)
    for c in (*claims, *SENSITIVITY_CHECKS):
        if c.key == key:
            return c
    raise KeyError(f"unknown claim {key!r}; valid claims: {', '.join(c.key for c in claims)}; "
                   f"sensitivity checks: {', '.join(c.key for c in SENSITIVITY_CHECKS)}")


class SupportCount(NamedTuple):
    """How many of the claims judged are supported (sensitivity checks not counted)."""

    supported: int
    judged: int
    """Claims given a verdict (not :data:`~sae_med.measure.compare.NOT_JUDGED`)."""

    def __str__(self) -> str:
        if not self.judged:  # a run's SAEs pass or fail the quality bar for every claim
            return f"no claim judged ({NOT_JUDGED})"
        return f"{self.supported} of {self.judged} claims supported"


def support_count(verdicts: Mapping[str, Verdict]) -> SupportCount:
    """:class:`SupportCount` of ``{claim key: verdict}``; the keys of sensitivity checks
    are left out, whatever their verdict, and so are claims not judged."""
    counted = [v for k, v in verdicts.items() if claim(k).is_claim and v != NOT_JUDGED]
    return SupportCount(sum(v == "supported" for v in counted), len(counted))


def oriented_gaps(gaps: Any, first: str, second: str) -> Any:
    """The gap rows of :func:`sae_med.measure.results.load_comparisons` as ``first`` minus
    ``second`` (rows stored the other way round are negated, their interval flipped)."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    same = gaps[(gaps.train_corpus == first) & (gaps.versus == second)].copy()
    flip = gaps[(gaps.train_corpus == second) & (gaps.versus == first)].copy()
    flip["value"], flip["low"], flip["high"] = -flip.value, -flip.high, -flip.low
    flip["train_corpus"], flip["versus"] = first, second
    return pd.concat([same, flip], ignore_index=True)


def oriented_contrasts(contrasts: Any, kind: str, first: str, second: str) -> Any:
    """The contrast rows of ``kind`` as ``first`` versus ``second`` (rows stored the other
    way round are negated, their interval flipped: both kinds are antisymmetric)."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    if contrasts is None or contrasts.empty:
        return pd.DataFrame(columns=["kind", "first", "second", "reference", "metric",
                                     "basis", "l0_target", "fve", "grid_point", "value",
                                     "low", "high"])
    sel = contrasts[contrasts.kind == kind]
    same = sel[(sel["first"] == first) & (sel["second"] == second)].copy()
    flip = sel[(sel["first"] == second) & (sel["second"] == first)].copy()
    flip["value"], flip["low"], flip["high"] = -flip.value, -flip.high, -flip.low
    flip["first"], flip["second"] = first, second
    return pd.concat([same, flip], ignore_index=True)


def row_intervals(rows: Any) -> list[Interval]:
    """The :class:`~sae_med.measure.bootstrap.Interval` of each row (value, low, high; NaN ends
    become None), in row order."""
    return [Interval(float(r.value), None if r.low != r.low else float(r.low),
                     None if r.high != r.high else float(r.high)) for r in rows.itertuples()]


def gap_intervals(gaps: Any, metric: str, eval_corpus: str, basis: str = "l0_target"
                  ) -> list[Interval]:
    """The interval of every gap of ``metric`` on ``eval_corpus`` at ``basis`` (in
    target-L0 or FVE order)."""
    sel = gaps[(gaps.metric == metric) & (gaps.eval_corpus == eval_corpus)
               & (gaps.basis == basis)].sort_values(basis)
    return row_intervals(sel)


MATCHED_WORDS = {"fve": "FVE", "fve_typical": "typical FVE"}
"""The fidelity axis of each matched basis, in words."""


def dropped_sentence(gaps: Any, metrics: Sequence[str], eval_corpus: str,
                     basis: str = "fve") -> str:
    """How many bootstrap replicates the gaps of ``metrics`` on ``eval_corpus`` at a
    matched ``basis`` (``fve`` or ``fve_typical``) left out (a drawn sweep did not reach
    the grid point), per metric at its worst grid point: one sentence, for beside a
    matched table."""
    axis = MATCHED_WORDS[basis]
    sel = gaps[(gaps.basis == basis) & (gaps.eval_corpus == eval_corpus)
               & gaps.metric.isin(metrics)]
    if sel.empty:
        return f"No comparison at matched {axis}, so no replicate was left out."
    parts = []
    for m in (m for m in metrics if m in set(sel.metric)):
        worst = sel[sel.metric == m].sort_values("dropped").iloc[-1]
        parts.append(f"{m} {int(worst.dropped):,} of {int(worst.n_boot):,} "
                     f"({worst.dropped / max(worst.n_boot, 1):.1%}, at {axis} "
                     f"{worst[basis]:.3f})")
    return (f"Bootstrap replicates left out at matched {axis} (a drawn sweep did not reach "
            f"that {axis}), at the worst grid point: " + "; ".join(parts) + ".")


def step_intervals(steps: Any, train_corpus: str, eval_corpus: str, metric: str
                   ) -> list[Interval]:
    """The interval of each step of one family sweep (``train_corpus`` SAEs scored on
    ``eval_corpus``) of ``metric``, in target-L0 order; none when ``steps`` is empty."""
    if steps.empty:
        return []
    sel = steps[(steps.train_corpus == train_corpus) & (steps.eval_corpus == eval_corpus)
                & (steps.metric == metric)].sort_values("from_target")
    return row_intervals(sel)


def l0_trend(steps: Any, train_corpus: str, eval_corpus: str, metric: str) -> L0Trend:
    """:func:`~sae_med.measure.compare.trend_verdict` of one family sweep's steps
    (:func:`step_intervals`)."""
    return trend_verdict(step_intervals(steps, train_corpus, eval_corpus, metric))


def claim_verdict(comparisons: ComparisonTables, key: str, domain: str, broad: str
                  ) -> Verdict:
    """The verdict on claim ``key`` from the paired gaps of one run (domain minus broad
    SAE on held-out ``domain`` text: at every target L0, and at every matched FVE where
    the claim asks for it); not judged when its SAEs fail the quality bar. A contrast claim
    (difference-in-differences, home excess) is judged from contrasts, never here."""
    c = claim(key)
    if c in (*DID_CLAIMS, *HOME_EXCESS_CLAIMS):
        raise ValueError(f"claim {key!r} is judged from contrasts: use contrast_verdict or "
                         "placebo_verdict")
    ours = oriented_gaps(comparisons.gaps, domain, broad)
    at_fve = gap_intervals(ours, c.metric, domain, "fve") if c.matched_fve else None
    return judged(verdict(gap_intervals(ours, c.metric, domain), at_fve, sign=c.sign),
                  comparisons.families, domain)


def _contrast_verdict(comparisons: ComparisonTables, c: Claim, kind: str, first: str,
                      second: str, domain: str) -> Verdict:
    rows = oriented_contrasts(comparisons.contrasts, kind, first, second)
    rows = rows[rows.metric == c.metric]
    at_l0 = row_intervals(rows[rows.basis == "l0_target"].sort_values("l0_target"))
    at_fve = (row_intervals(rows[rows.basis == "fve"].sort_values("grid_point"))
              if c.matched_fve else None)
    return judged(verdict(at_l0, at_fve, sign=c.sign), comparisons.families, domain)


def contrast_verdict(comparisons: ComparisonTables, key: str, domain: str, broad: str
                     ) -> Verdict:
    """The verdict on a :data:`DID_CLAIMS` claim: its difference-in-differences excludes 0
    on the claimed side at every target L0 (and every matched-FVE rank where the claim asks
    for it); not judged when the domain SAEs fail the quality bar."""
    return _contrast_verdict(comparisons, claim(key), "did", domain, broad, domain)


def placebo_verdict(comparisons: ComparisonTables, key: str, domain: str, placebo: str,
                    broad: str) -> Verdict:
    """The verdict on a :data:`HOME_EXCESS_CLAIMS` claim for one placebo domain: the
    domain's home advantage over ``broad`` minus the placebo's excludes 0 on the claimed
    side at every target L0 (and matched-FVE rank where asked)."""
    rows = comparisons.contrasts
    if rows is not None and not rows.empty:
        refs = set(rows[rows.kind == "home_excess"].reference)
        if refs and broad not in refs:
            raise ValueError(f"home advantages in this run are over {sorted(refs)}, "
                             f"not {broad!r}")
    return _contrast_verdict(comparisons, claim(key), "home_excess", domain, placebo, domain)


def concept_verdict(scores: Mapping[str, Any], families: Any, domain: str, broad: str,
                    seed: int = 0, n_boot: int = EvalConfig.bootstrap) -> Verdict:
    """The verdict on :data:`CONCEPT` from autointerp scores (``{train corpus: table of
    LatentScore rows with their seed replicate}``): the domain SAEs' mean detection AUROC
    minus the broad SAEs', with its two-level bootstrap interval, each side resampling
    seeds, then latents within each drawn seed (``n_boot`` replicates: the run's
    ``eval.bootstrap``; a table from one seed resamples latents alone); not judged when
    the run's SAEs (its ``families`` rows) fail the quality bar."""
    pair = {c: scores[c] for c in (domain, broad) if c in scores}
    table = compare_scores(pair, CONCEPT.metric, n_boot, seed).set_index("SAE")
    row = f"{domain} − {broad}"
    ivs = [] if row not in table.index else [
        Interval(*(float(table.loc[row, c]) for c in ("mean", "ci_low", "ci_high")))]
    return judged(verdict(ivs, sign=CONCEPT.sign), families, domain)


class ModelRun(NamedTuple):
    """One model's run of the experiment: the config's own, or one of its replications."""
    label: str
    """The model and layer, e.g. ``gemma-3-270m (block 13)``."""
    cfg: Config
    comparisons: ComparisonTables


def model_label(cfg: Config) -> str:
    return f"{cfg.model.name.removeprefix('embedded:')} (block {cfg.model.hook_layer})"


def verdicts_by_model(runs: Sequence[ModelRun], key: str, domain: str, broad: str
                      ) -> dict[str, Verdict]:
    """``{model label: verdict}`` on claim ``key``, one per run."""
    return {r.label: claim_verdict(r.comparisons, key, domain, broad) for r in runs}


def verdicts_by_claim(run: ModelRun, domain: str, broad: str) -> dict[str, Verdict]:
    """``{claim key: verdict}`` of every claim of :data:`CLAIMS` on one run (for
    :func:`support_count`)."""
    return {c.key: claim_verdict(run.comparisons, c.key, domain, broad) for c in CLAIMS}


def replication_sentence(text: str, verdicts: dict[str, Verdict]) -> str:
    """One sentence on whether the claim ``text`` replicates across the models of
    ``verdicts`` (``{model label: verdict}``)."""
    labels = list(verdicts)
    if NOT_JUDGED in verdicts.values() and len(set(verdicts.values())) > 1:
        parts = "; ".join(f"“{v}” on {m}" for m, v in verdicts.items())
        return (f"{text}: {parts}; whether it replicates is not judged while a model's SAEs "
                "are below the quality bar.")
    if len(labels) < 2:
        return (f"{text}: “{verdicts[labels[0]]}” on {labels[0]}, the only model of this run "
                "(a config's `replications` add others).")
    if len(set(verdicts.values())) == 1:
        v = verdicts[labels[0]]
        if v == NOT_JUDGED:
            return f"{text}: not judged on any model ({', '.join(labels)}): the SAEs are " \
                   "below the quality bar."
        how = "replicates" if v == "supported" else "is consistent"
        return f"{text}: “{v}” on every model ({', '.join(labels)}); the verdict {how} " \
               "across model families."
    parts = "; ".join(f"“{v}” on {m}" for m, v in verdicts.items())
    if set(verdicts.values()) == {"supported", UNTESTED_AT_FVE}:
        return (f"{text}: {parts}; it holds at the same L0 on every model, and beyond FVE "
                "where that could be tested.")
    return f"{text}: {parts}; the verdict does not replicate across model families."


SAME_VERDICT = "same verdict on every model"
""":func:`verdicts_frame`'s agreement column (renamed where its columns are runs)."""


def verdicts_frame(verdicts: Mapping[str, Mapping[str, Verdict]]) -> Any:
    """Claims × models from ``{claim text: {model label: verdict}}``, with whether each
    claim gets the same verdict on every model."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    rows = [{"claim": text, **by_model, SAME_VERDICT: same_verdict(by_model)}
            for text, by_model in verdicts.items()]
    return pd.DataFrame(rows).set_index("claim")


def same_verdict(by_model: Mapping[str, Verdict]) -> str:
    """``yes`` or ``no``; ``not judged`` when a model's SAEs are below the quality bar."""
    if NOT_JUDGED in by_model.values():
        return "not judged"
    return "yes" if len(set(by_model.values())) == 1 else "no"


def verdict_table(runs: Sequence[ModelRun], keys: Sequence[str], domain: str, broad: str
                  ) -> Any:
    """:func:`verdicts_frame` of the claims ``keys`` judged on each run."""
    return verdicts_frame({claim(k).text: verdicts_by_model(runs, k, domain, broad)
                           for k in keys})


def replication_sentences(runs: Sequence[ModelRun], keys: Sequence[str], domain: str,
                          broad: str) -> str:
    """:func:`replication_sentence` for each claim of ``keys``, joined."""
    return " ".join(replication_sentence(claim(k).text, verdicts_by_model(runs, k, domain,
                                                                          broad))
                    for k in keys)


def gaps_by_model(runs: Sequence[ModelRun], domain: str, broad: str) -> Any:
    """Every run's domain-minus-broad gaps in one frame with a ``model`` column."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    return pd.concat([oriented_gaps(r.comparisons.gaps, domain, broad).assign(model=r.label)
                      for r in runs], ignore_index=True)


# --------------------------------------------------------------------------------------
# Rules frozen by version
# --------------------------------------------------------------------------------------

FROZEN_RULES = "tests/report/frozen_rules.json"
"""The record of every frozen rule's fingerprint per version (:func:`record_frozen`)."""
RECORD_COMMAND = f".venv/bin/python -m sae_med.report.claims {FROZEN_RULES}"
"""Adds the current version of every frozen rule to the record; it refuses to change a
recorded fingerprint, so a changed rule needs a new version first."""


def all_claims() -> tuple[Claim, ...]:
    """Every claim and sensitivity check with a rule (:func:`rule_fingerprint`)."""
    return (*CLAIMS, *SENSITIVITY_CHECKS, *DID_CLAIMS, *HOME_EXCESS_CLAIMS, CONCEPT)


def judging_code(fn: Callable[..., Any]) -> str:
    """A function's code without its docstring, comments or layout: what it does."""
    node = ast.parse(inspect.getsource(fn).strip()).body[0]
    body = node.body  # type: ignore[attr-defined]
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.unparse(node)


def _judges(c: Claim) -> tuple[Callable[..., Any], ...]:
    """The functions that turn a run's rows into ``c``'s verdict."""
    shared = (verdict, judged, meets_quality_bar, bar_dce, row_intervals)
    if c in DID_CLAIMS:
        return (*shared, contrast_verdict, _contrast_verdict, oriented_contrasts)
    if c in HOME_EXCESS_CLAIMS:
        return (*shared, placebo_verdict, _contrast_verdict, oriented_contrasts)
    if c == CONCEPT:
        return (*shared, concept_verdict, compare_scores, replicates_of,
                independent_difference, nested_mean_draws)
    return (*shared, claim_verdict, oriented_gaps, gap_intervals)


def rule_fingerprint(c: Claim) -> str:
    """A hash of everything that decides ``c``'s verdict: its metric, sign and matched-FVE
    flag, the quality bar, and the code of the functions that judge it (not its wording,
    not its version)."""
    fields = {k: v for k, v in c._asdict().items() if k not in ("text", "version")}
    return stable_hash({"claim": fields, "bar_nats": DCE_BAR_NATS,
                        "code": [judging_code(f) for f in _judges(c)]})


class Computation(NamedTuple):
    """Code that computes the intervals the rules judge, frozen by version like a rule."""

    key: str
    functions: tuple[str, ...]
    """Names of the functions that compute them, looked up in :mod:`sae_med.measure.compare`
    (``percentile_interval`` is the bootstrap module's, imported there)."""
    version: int = 1
    """Bumped whenever :func:`computation_fingerprint` changes (the record keeps every
    version's fingerprint)."""
    module: str = "sae_med.measure.compare"
    """Where ``functions`` are looked up; a dotted name (``comparison._steps``) is read
    attribute by attribute from there."""


COMPARISON_COMPUTATION = Computation("comparison_computation", (
    "seed_draws", "seed_mean", "interpolate", "matched", "fve_grid", "compare", "_gaps",
    "_matched_grid", "contrasts", "_home", "_paired_positions", "_contrast_rows",
    "percentile_interval"))
"""How the gaps and contrasts every claim judges are computed from the SAEs' bootstrap
draws: across-seed means, matched-FVE grids and interpolation, gaps, contrasts across
texts, percentile intervals. A change there moves verdicts without touching a claim's rule,
so it has a version of its own, and no claim's version moves with it."""


RESAMPLING_COMPUTATION = Computation("resampling", (
    "group_counts", "doc_resample", "DocResample.columns", "statistic_draws",
    "resample_indices", "_mean_draws", "_finite_values"),
    version=2, module="sae_med.measure.bootstrap")
"""How every SAE's bootstrap draws are made: document groups drawn with replacement
(the split's grouping unit), their counts applied to per-document sums; and the
concept claim's latent draws (the indices, means and NaN filter its nested resample
calls). The comparison computation starts from these draws, so a change here moves
intervals too. Version 2 covers the concept claim's helpers as well (the same code and
draws as version 1's run; before, a change to them would have moved that verdict
unrecorded)."""

L0_TREND_COMPUTATION = Computation("l0_trend", (
    "l0_trend", "step_intervals", "row_intervals", "trend_verdict", "comparison._steps"),
    module="sae_med.report.claims")
"""The reported trend of a family's ΔCE with target L0 (``falls with L0`` when every
paired step excludes 0 below it): a verdict the book glues, so its rule is frozen too."""

COMPUTATIONS = (COMPARISON_COMPUTATION, RESAMPLING_COMPUTATION, L0_TREND_COMPUTATION)


def computation_fingerprint(c: Computation = COMPARISON_COMPUTATION) -> str:
    """A hash of the code of ``c``'s functions (read from their module now, so a patched
    one counts), the matched axes and the interval level (not its version)."""
    where = importlib.import_module(c.module)
    code = [judging_code(functools.reduce(getattr, f.split("."), where)) for f in c.functions]
    return stable_hash({"functions": c.functions, "axes": comparison.MATCHED_AXES,
                        "level": comparison.LEVEL, "code": code})


def frozen_fingerprints() -> dict[str, tuple[int, str]]:
    """``{key: (version, fingerprint now)}`` of every frozen rule and of every frozen
    computation (:data:`COMPUTATIONS`)."""
    return {**{r.key: (r.version, rule_fingerprint(r)) for r in all_claims()},
            **{c.key: (c.version, computation_fingerprint(c)) for c in COMPUTATIONS}}


def record_frozen(path: Path) -> None:
    """Add the current version's fingerprint of everything frozen to the record at ``path``;
    a recorded version whose fingerprint changed is an error, never overwritten."""
    recorded = json.loads(path.read_text()) if path.exists() else {}
    for key, (version, got) in frozen_fingerprints().items():
        was = recorded.setdefault(key, {}).setdefault(str(version), got)
        if was != got:
            raise ValueError(f"{key} version {version} is recorded as {was} but is now "
                             f"{got}: bump its version in sae_med/report/claims.py, then "
                             "record again")
    path.write_text(json.dumps(recorded, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    record_frozen(Path(sys.argv[1] if len(sys.argv) > 1 else FROZEN_RULES))
