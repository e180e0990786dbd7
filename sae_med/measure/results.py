"""The results table: one typed row per SAE and eval corpus, and its file."""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

from sae_med.artifacts import atomic_path, write_json_atomic
from sae_med.config import DECLARED_MASSIVE_NORM_RATIO, Config
from sae_med.lm.weights import weights_record
from sae_med.measure.bootstrap import (
    Interval,
    finite_or_none,
)
from sae_med.measure.compare import TYPICAL_FVE_METRIC, Comparison, Contrast
from sae_med.measure.dark_matter import DarkMatterResult
from sae_med.measure.metrics import (
    DensityHistogram,
)

SCHEMA_VERSION = 8
"""Version of ``results.json`` (7 had no rows at matched typical FVE, basis
``fve_typical``; 6 had no contrasts; 5 resampled documents, not their groups, and
counted no dropped matched-FVE replicates; 4 had no steps between target L0s; 3 had no
fve_typical; 2 had no seed replicates, family means or gaps; 1 had no dark-matter
intervals)."""
READABLE_SCHEMAS = (7, SCHEMA_VERSION)
"""Versions :func:`read_results` accepts: a version 7 file is a version 8 file without the
matched-typical-FVE rows, which every reader shows only where present."""
RECON_METRICS = ("l0", "fve", "fve_uncentered", "mse", "rel_bias")
"""Bootstrapped from per-document sums (:class:`~sae_med.measure.metrics.DocMetrics` fields)."""
TYPICAL_METRICS = (TYPICAL_FVE_METRIC,)
"""Bootstrapped from the per-document sums of typical tokens (no massive activation)."""
POINT_METRICS = ("fve_batch_mean", "dead_frac", "dense_frac", "massive_tokens")
"""No interval: a per-batch average and set-level counts, not ratios of document sums."""
CE_METRICS = ("ce_clean", "ce_spliced", "ce_zero", "delta_ce", "loss_recovered",
              "kl_spliced", "kl_zero", "kl_score")
"""Bootstrapped from per-document CE sums (:class:`~sae_med.measure.metrics.CESummary` fields)."""
MEAN_ABLATION_METRICS = ("ce_mean_ablation", "loss_recovered_mean")
"""Against the mean-ablation baseline (:func:`~sae_med.measure.metrics.summarize_vs_mean`)."""
DARK_MATTER_METRICS = ("r2_error_mean", "r2_error_pooled", "r2_norm", "fvu_linear",
                       "fvu_nonlinear", "fvu_sae")


# --------------------------------------------------------------------------------------
# Reconstruction and dark matter over a cache
# --------------------------------------------------------------------------------------

class DarkMatterSummary(NamedTuple):
    """The dark-matter block of a results row: held-out scores of the fit, or why there
    are none (``error``, when the document split leaves a side empty)."""

    train_frac: float
    seed: int
    scores: DarkMatterResult | None = None
    n_eval_documents: int | None = None
    error: str | None = None
    intervals: Mapping[str, Interval] | None = None
    """95% bootstrap over held-out documents given the fit (None when n_boot is 0)."""

    def to_dict(self) -> dict[str, Any]:
        if self.scores is None:
            return {"train_frac": self.train_frac, "seed": self.seed, "error": self.error}
        return {**{k: finite_or_none(v) for k, v in self.scores._asdict().items()},
                "train_frac": self.train_frac, "seed": self.seed,
                "n_eval_documents": self.n_eval_documents,
                "intervals": None if self.intervals is None else {
                    k: {"low": finite_or_none(iv.low), "high": finite_or_none(iv.high)}
                    for k, iv in self.intervals.items()}}


# --------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------

class BootstrapInfo(NamedTuple):
    """How a row's intervals were drawn."""

    n_boot: int
    level: float
    seed: int
    n_groups: int
    """Document groups resampled (the unit: :func:`document_groups`)."""
    unit: str = "document group"


@dataclass(frozen=True)
class ResultRow:
    """One SAE scored on one eval corpus: a row of ``results.json`` (schema
    :data:`SCHEMA_VERSION`; :meth:`to_dict` is its JSON form). A new metric is a new name
    in :data:`RECON_METRICS`, :data:`POINT_METRICS` or :data:`CE_METRICS`."""

    sae_id: str
    """The key of the SAE in ``saes``."""
    eval_corpus: str
    """Corpus the SAE was scored on (its held-out eval split)."""
    n_tokens: int
    """Activation vectors scored for reconstruction (the whole eval cache)."""
    n_documents: int
    """Distinct documents those tokens come from."""
    ce_documents: int
    """Documents used for the spliced-loss metrics."""
    ce_tokens: int
    """Next-token predictions scored (positions t spliced, t + 1 real)."""
    metrics: Mapping[str, Interval]
    """Every metric with its 95% percentile bootstrap interval over document groups (low/high
    None for the point-only :data:`POINT_METRICS`); definitions in
    :mod:`sae_med.measure.metrics`."""
    bootstrap: BootstrapInfo
    dark_matter: DarkMatterSummary
    density_histogram: DensityHistogram
    """Log10 firing rates of the latents over the cache's tokens."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """Extra columns (train_corpus, l0_target, replicate, d_sae, ...), flat in the JSON."""
    split: str = "eval"

    def to_dict(self) -> dict[str, Any]:
        hist = self.density_histogram
        return {
            "sae_id": self.sae_id, "eval_corpus": self.eval_corpus, "split": self.split,
            "n_tokens": self.n_tokens, "n_documents": self.n_documents,
            "ce_documents": self.ce_documents, "ce_tokens": self.ce_tokens,
            "metrics": {k: {"value": finite_or_none(iv.value), "low": finite_or_none(iv.low),
                            "high": finite_or_none(iv.high)}
                        for k, iv in self.metrics.items()},
            "bootstrap": self.bootstrap._asdict(),
            "dark_matter": self.dark_matter.to_dict(),
            "density_histogram": {"edges": hist.edges.tolist(), "counts": hist.counts.tolist(),
                                  "n_dead": hist.n_dead, "n_tokens": self.n_tokens},
            **dict(self.meta),
        }


# --------------------------------------------------------------------------------------
# Results file and tidy table
# --------------------------------------------------------------------------------------

def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for key, dist in (("torch", "torch"), ("transformers", "transformers"),
                      ("transformer_lens", "transformer-lens"), ("sae_lens", "sae-lens"),
                      ("sae_med", "sae-med"), ("pandas", "pandas")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "not installed"
    return out


ROW_COLUMNS = ("sae_id", "eval_corpus", "split", "n_tokens", "n_documents", "ce_documents",
                "ce_tokens")
STRUCTURED = ("metrics", "dark_matter", "density_histogram", "bootstrap")


def tidy_results(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Long table: one row per sae_id × eval_corpus × metric with value, low, high, the
    counts of :data:`ROW_COLUMNS`, ``row_type`` "sae" and every meta key, sorted
    (lists/dicts as JSON text)."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    records = []
    for row in rows:
        base: dict[str, Any] = {k: row.get(k) for k in ROW_COLUMNS}
        base["row_type"] = "sae"
        for k, v in row.items():
            if k in ROW_COLUMNS or k in STRUCTURED:
                continue
            base[k] = v if v is None or isinstance(v, str | int | float | bool) \
                else json.dumps(v, sort_keys=True, default=str)
        metrics = row.get("metrics", {})
        order = [*RECON_METRICS, *POINT_METRICS, *CE_METRICS, *MEAN_ABLATION_METRICS]
        for name in [*(k for k in order if k in metrics),
                     *sorted(k for k in metrics if k not in order)]:
            m = metrics[name]
            records.append({**base, "metric": name, "value": m["value"], "low": m["low"],
                            "high": m["high"]})
        dm = row.get("dark_matter") or {}
        for name in DARK_MATTER_METRICS:
            if name in dm:
                iv = (dm.get("intervals") or {}).get(name) or {}
                records.append({**base, "metric": f"dark_matter.{name}",
                                "value": dm[name], "low": iv.get("low"),
                                "high": iv.get("high")})
    df = pd.DataFrame.from_records(records)
    lead = [*ROW_COLUMNS, "metric", "value", "low", "high"]
    if df.empty:
        return pd.DataFrame(columns=lead)
    for c in ("value", "low", "high"):
        df[c] = df[c].astype(float)
    return df[lead + sorted(c for c in df.columns if c not in lead)]


def write_results(rows: Sequence[ResultRow | Mapping[str, Any]], cfg: Config, path: str | Path,
                  comparisons: Sequence[Comparison] = (),
                  extra: Mapping[str, Any] | None = None,
                  contrast_rows: Sequence[Contrast] = ()) -> Path:
    """Write ``rows``, the ``comparisons`` (family means, gaps and steps) and the
    ``contrast_rows`` as the results JSON (schema in the module docstring) and the tidy CSV
    beside it (same stem, ``.csv``: the :func:`tidy_results` rows, then the family, gap,
    step and contrast rows, told apart by ``row_type``), both atomically; ``extra`` keys
    are added to the JSON's top level. Returns the JSON path."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    path = Path(path)
    rows = [r.to_dict() if isinstance(r, ResultRow) else r for r in rows]
    families = [f.to_dict() for c in comparisons for f in c.families]
    gaps = [g.to_dict() for c in comparisons for g in c.gaps]
    steps = [s.to_dict() for c in comparisons for s in c.steps]
    contrast_dicts = [c.to_dict() for c in contrast_rows]

    doc = {"schema_version": SCHEMA_VERSION,
           "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "config": cfg.to_dict(), "software": software_versions(), "seed": cfg.seed,
           "weights": weights_record(cfg.model.name).to_dict(),
           "rows": list(rows), "families": families, "gaps": gaps, "steps": steps,
           "contrasts": contrast_dicts, **(extra or {})}
    write_json_atomic(path, doc)
    extra = [{**r, "seed_values": json.dumps(r["seed_values"])} if "seed_values" in r else r
             for r in families + gaps + steps + contrast_dicts]
    table = pd.concat([tidy_results(rows), pd.DataFrame.from_records(extra)],
                      ignore_index=True) if extra else tidy_results(rows)
    with atomic_path(path.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if doc.get("schema_version") not in READABLE_SCHEMAS:
        raise ValueError(f"{path}: results schema {doc.get('schema_version')!r}, this "
                         f"sae-med reads {', '.join(map(str, READABLE_SCHEMAS))}; rerun "
                         "the evaluate stage")
    return doc


def load_results(path: str | Path) -> Any:
    """The tidy :func:`tidy_results` DataFrame of a results JSON (for notebooks)."""
    return tidy_results(read_results(path)["rows"])


class ComparisonTables(NamedTuple):
    """The family, gap, step and contrast rows of a results JSON as DataFrames (columns: the
    keys of :meth:`~sae_med.measure.compare.FamilyScore.to_dict`,
    :meth:`~sae_med.measure.compare.Gap.to_dict`, :meth:`~sae_med.measure.compare.Step.to_dict`
    and :meth:`~sae_med.measure.compare.Contrast.to_dict`)."""

    families: Any
    gaps: Any
    steps: Any
    contrasts: Any = None
    """None where a caller builds tables without contrasts (an empty frame when read)."""


def load_comparisons(path: str | Path) -> ComparisonTables:
    """Across-seed family means, paired gaps, steps and contrasts of a results JSON (for
    notebooks)."""
    return comparison_tables(read_results(path))


def comparison_tables(doc: Mapping[str, Any]) -> ComparisonTables:
    """:func:`load_comparisons` of an already read results document."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    ratio = doc.get("config", {}).get("eval", {}).get("massive_norm_ratio",
                                                      DECLARED_MASSIVE_NORM_RATIO)
    frames = []
    for key in ComparisonTables._fields:
        df = pd.DataFrame.from_records(doc.get(key, []))
        for c in ("value", "low", "high"):
            if c in df:
                df[c] = df[c].astype(float)
        frames.append(_mask_named(df, ratio))
    return ComparisonTables(*frames)


def _mask_named(df: Any, ratio: float) -> Any:
    """``df`` with its typical-FVE rows renamed ``fve_typical@<ratio>`` (metric and basis)
    when the run masked typical tokens at another ``ratio`` than the declared one, so that
    no rule judges them (they are still shown, under their own name)."""
    if ratio == DECLARED_MASSIVE_NORM_RATIO:
        return df
    for col in ("metric", "basis"):
        if col in df:
            df[col] = df[col].replace(TYPICAL_FVE_METRIC, f"{TYPICAL_FVE_METRIC}@{ratio:g}")
    return df
