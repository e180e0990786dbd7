"""The random-weights control in tables and sentences: each side's home
advantage on the trained model against the same on a model whose weights were redrawn
(``configs/random_weights.yaml``), as a ratio with the verdict of
:func:`sae_med.measure.controls.control_verdict` (loss-based rows gated by
:data:`~sae_med.measure.controls.LOSS_RULE` on the random model's own clean and
zero-ablated CE)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from sae_med.artifacts import stable_hash
from sae_med.config import load_config
from sae_med.layout import RESULTS_NAME
from sae_med.lm.files import EMBEDDED_MODELS
from sae_med.measure.bootstrap import Interval
from sae_med.measure.controls import (
    LOSS_METRICS,
    LOSS_RULE,
    LossBaseline,
    LossRule,
    control_verdict,
    gap_ratio,
    has_loss_to_lose,
)
from sae_med.report.claims import (
    ModelRun,
    judging_code,
    model_label,
    oriented_gaps,
    row_intervals,
)
from sae_med.report.domain_report import load_side_run

if TYPE_CHECKING:
    from sae_med.config import Config
    from sae_med.measure.results import ComparisonTables

RANDOM_WEIGHTS_CONFIG = "configs/random_weights.yaml"
RANDOM_WEIGHTS_COMMAND = f"sae-med run {RANDOM_WEIGHTS_CONFIG}"
CONTROL_METRICS = ("fve_typical", "fve", "delta_ce", "dark_matter.r2_error_mean")
VERDICT_METRICS = ("fve_typical", "delta_ce")
"""The metrics whose verdicts the results page shows."""


class ControlRow(NamedTuple):
    """One home advantage (``own`` SAE minus ``other`` on ``own`` text) on both models."""

    l0_target: float
    own: str
    other: str
    metric: str
    trained: Interval
    random: Interval
    ratio: Interval
    loss: LossBaseline | None = None
    """The random model's clean and zero-ablated CE on ``own`` text (what the loss gate
    reads); None where the run has no CE rows or the vocabulary size was not given."""

    @property
    def verdict(self) -> str:
        return control_verdict(self.ratio, self.metric, self.loss)


def _gap(gaps: Any, own: str, other: str, metric: str, target: float) -> Interval | None:
    g = oriented_gaps(gaps, own, other)
    row = g[(g.basis == "l0_target") & (g.eval_corpus == own) & (g.metric == metric)
            & (g.l0_target == target)]
    return None if row.empty else row_intervals(row)[0]


def loss_baseline(families: Any, corpus: str, target: float, vocab_size: int | None
                  ) -> LossBaseline | None:
    """The ``corpus`` SAEs' family means of ``ce_clean`` and ``ce_zero`` on ``corpus``
    text at ``target`` (neither depends on the SAE: the model's own loss on that text);
    None without ``vocab_size`` or without those rows."""
    if vocab_size is None or families.empty:
        return None
    sel = families[(families.train_corpus == corpus) & (families.eval_corpus == corpus)
                   & (families.basis == "l0_target") & (families.l0_target == target)]
    ce = {m: sel[sel.metric == m].value for m in ("ce_clean", "ce_zero")}
    if any(v.empty for v in ce.values()):
        return None
    return LossBaseline(float(ce["ce_clean"].iloc[0]), float(ce["ce_zero"].iloc[0]),
                        vocab_size)


def control_rows(random: ComparisonTables, trained: ComparisonTables, domain: str,
                 broad: str, metrics: tuple[str, ...] = CONTROL_METRICS,
                 vocab_size: int | None = None) -> list[ControlRow]:
    """Both sides' home advantages at every target L0 the two runs share; ``vocab_size``
    (the random model's: :func:`model_vocab_size`) lets the loss gate judge the
    loss-based rows, which without it are not judged."""
    targets = sorted(set(random.gaps.l0_target.dropna()) & set(trained.gaps.l0_target.dropna()))
    rows = []
    for t in targets:
        for own, other in ((domain, broad), (broad, domain)):
            loss = loss_baseline(random.families, own, t, vocab_size)
            for m in metrics:
                r, g = _gap(random.gaps, own, other, m, t), _gap(trained.gaps, own, other, m, t)
                if r is not None and g is not None:
                    rows.append(ControlRow(t, own, other, m, g, r, gap_ratio(r, g), loss))
    return rows


def model_vocab_size(cfg: Config) -> int:
    """The vocabulary size of ``cfg``'s model (its Hugging Face config's ``vocab_size``,
    the unembedding's width), read without loading the weights into a model."""
    # deferred: transformers is heavy to import; only this reader needs it
    from transformers import AutoConfig

    name = cfg.model.name
    where = EMBEDDED_MODELS[name].make_dir(None)[0] if name in EMBEDDED_MODELS else name
    hf = AutoConfig.from_pretrained(str(where))
    return int(getattr(hf, "text_config", hf).vocab_size)


def control_rule_fingerprint(rule: LossRule = LOSS_RULE) -> str:
    """A hash of everything that decides a control row's verdict: the loss gate's
    margins, the metrics it gates, and the code that draws the ratio, reads the random
    model's loss and judges (not the rule's version)."""
    fields = {k: v for k, v in rule._asdict().items() if k != "version"}
    code = (gap_ratio, has_loss_to_lose, control_verdict, loss_baseline)
    return stable_hash({"rule": fields, "loss_metrics": sorted(LOSS_METRICS),
                        "code": [judging_code(f) for f in code]})


def _cell(g: Interval, fmt: str = "+.3f") -> str:
    span = "" if g.low is None else f" [{g.low:{fmt}}, {g.high:{fmt}}]"
    return f"{g.value:{fmt}}{span}"


def control_table(rows: list[ControlRow]) -> Any:
    """One line per row: the trained and random-weights advantages, ratio and verdict."""
    # deferred: pandas takes ~0.5 s to import; only the table needs it
    import pandas as pd

    return pd.DataFrame([{
        "target L0": r.l0_target, "home advantage": f"{r.own} SAE − {r.other} SAE on "
        f"{r.own} text", "metric": r.metric, "trained weights": _cell(r.trained),
        "random weights": _cell(r.random), "ratio": _cell(r.ratio, ".2f"),
        "verdict": r.verdict} for r in rows])


def control_verdicts(rows: list[ControlRow] | None, domain: str, note: str
                     ) -> dict[str, str]:
    """The results page's rows, ``{verdict_random_<metric>: text}``: the domain side's
    verdict at each target L0, or ``note`` (why there is none) without the run."""
    out = {}
    for m in VERDICT_METRICS:
        mine = [r for r in rows or [] if r.own == domain and r.metric == m]
        out[f"verdict_random_{m}"] = "; ".join(
            f"{r.verdict} (ratio {_cell(r.ratio, '.2f')} at L0 {r.l0_target:g})"
            for r in mine) or note
    return out


class ModelControl(NamedTuple):
    """One more model family's random-weights control (a replication of the config)."""

    label: str
    """The model and layer (:func:`~sae_med.report.claims.model_label`)."""
    rows: list[ControlRow] | None
    note: str
    """Which run was read, or why ``rows`` is None: the run or its trained counterpart is
    absent."""


def replication_controls(trained: Sequence[ModelRun], domain: str, broad: str,
                         config: str = RANDOM_WEIGHTS_CONFIG) -> list[ModelControl]:
    """Each replication of the random-weights ``config`` against the trained run of the
    same model and layer among ``trained`` (a chapter's
    :func:`~sae_med.report.domain_report.read_model_runs`), both read, never run."""
    out = []
    for rep in load_config(config).replication_configs().values():
        label = model_label(rep)
        status = load_side_run(rep.run_path / RESULTS_NAME, f"{label} random-weights",
                               RANDOM_WEIGHTS_COMMAND)
        match = next((r for r in trained if r.label == label), None)
        if status.run is None or match is None:
            out.append(ModelControl(label, None, status.note if status.run is None else
                                    f"No trained run of {label} to set it against."))
            continue
        rows = control_rows(status.run.comparisons, match.comparisons, domain, broad,
                            vocab_size=model_vocab_size(status.run.cfg))
        out.append(ModelControl(label, rows, status.note))
    return out
