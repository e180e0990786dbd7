"""Neuronpedia upload files: per SAE a source folder as Neuronpedia's exports lay it out,
``{model}/{layer}-{source set}/`` with ``release.jsonl``, ``model.jsonl``,
``sourceset.jsonl``, ``source.jsonl`` and gzipped JSONL batches of ``features/``
(density, activation histogram, logit-lens tokens, decoder vector), ``activations/`` (top
windows of the eval cache) and ``explanations/`` (sae-med autointerp's, when it ran).

The records carry the field names of Neuronpedia's ``neuronpedia_utils/db_models``; the
ones sae-med has nothing for keep Neuronpedia's defaults. Live inference is switched off
(``inferenceEnabled``) when the SAE was trained on other weights than the hub checkpoint
Neuronpedia would run it on; ``notes`` names the exact weights.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sae_med import __version__
from sae_med.cache.activations import ActivationCache, TokenInfo
from sae_med.config import Config
from sae_med.interpret.features import LatentActs, encode_cache
from sae_med.layout import CFG_FILENAME, LATENTS_NAME, autointerp_dir
from sae_med.report.exported import (
    ARCHITECTURE_NAMES,
    NEURONPEDIA_DIR,
    ExportedSAE,
    ExportError,
    ModelLens,
    Provenance,
    RunInputs,
    run_saes_dir,
    window_corpus,
)
from sae_med.sae.base import LinearSAE
from sae_med.sae.factory import load_sae

log = logging.getLogger(__name__)

BATCH_SIZE = 1024
"""Records per batch file, as Neuronpedia's exporter writes them."""
CREATOR_ID = None
"""Left empty: Neuronpedia's importer assigns the uploading account."""


@dataclass(frozen=True)
class Release:
    name: str
    description: str
    descriptionShort: str
    creatorName: str
    creatorNameShort: str
    urls: list[str]
    createdAt: str
    creatorId: str | None = CREATOR_ID
    visibility: str = "PUBLIC"


@dataclass(frozen=True)
class Model:
    id: str
    displayName: str
    displayNameShort: str
    instruct: bool
    layers: int
    dimension: int
    createdAt: str
    updatedAt: str
    creatorId: str | None = CREATOR_ID
    visibility: str = "PUBLIC"


@dataclass(frozen=True)
class SourceSet:
    modelId: str
    name: str
    description: str
    releaseName: str
    creatorName: str
    createdAt: str
    type: str = "sae-med"
    hasDashboards: bool = True
    creatorId: str | None = CREATOR_ID
    visibility: str = "PUBLIC"


@dataclass(frozen=True)
class Source:
    id: str
    modelId: str
    setName: str
    dataset: str
    num_prompts: int
    num_tokens_in_prompt: int
    inferenceEnabled: bool
    notes: str
    saelensConfig: str
    """The exported ``cfg.json``, as a JSON string."""
    createdAt: str
    hasDashboards: bool = True
    creatorId: str | None = CREATOR_ID
    visibility: str = "PUBLIC"


@dataclass(frozen=True)
class Feature:
    modelId: str
    layer: str
    """The source id (Neuronpedia calls a source a layer)."""
    index: str
    maxActApprox: float
    frac_nonzero: float
    pos_str: list[str]
    pos_values: list[float]
    neg_str: list[str]
    neg_values: list[float]
    freq_hist_data_bar_heights: list[float]
    freq_hist_data_bar_values: list[float]
    vector: list[float]
    hookName: str
    vectorDefaultSteerStrength: float
    createdAt: str
    hasVector: bool = True
    creatorId: str | None = CREATOR_ID


@dataclass(frozen=True)
class Activation:
    id: str
    modelId: str
    layer: str
    index: str
    tokens: list[str]
    values: list[float]
    maxValue: float
    maxValueTokenIndex: int
    minValue: float
    dataSource: str
    dataIndex: str
    """The document's id in the sae-med corpus."""
    createdAt: str
    creatorId: str | None = CREATOR_ID


@dataclass(frozen=True)
class Explanation:
    id: str
    modelId: str
    layer: str
    index: str
    description: str
    typeName: str
    explanationModelName: str
    notes: str
    createdAt: str
    authorId: str | None = CREATOR_ID


@dataclass(frozen=True)
class SourceRecords:
    """Everything one source folder holds."""

    release: Release
    model: Model
    sourceset: SourceSet
    source: Source
    features: list[Feature]
    activations: list[Activation]
    explanations: list[Explanation] = field(default_factory=list)


def slug(text: str) -> str:
    """Lower-case letters, digits and dashes: what Neuronpedia accepts in ids."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def source_id(layer: int, set_name: str) -> str:
    """``{layer}-{source set}``, Neuronpedia's source id."""
    return f"{layer}-{set_name}"


# --------------------------------------------------------------------------- features

class LatentData(NamedTuple):
    """One latent over a cache: how often and how strongly it fires, and where most."""

    density: float
    max_value: float
    hist_heights: list[float]
    hist_centres: list[float]
    top_rows: list[int]
    """Cache rows of its strongest activations, one per document, strongest first."""


def by_latent(acts: LatentActs) -> Iterator[tuple[Tensor, Tensor]]:
    """(rows, values) of each latent in turn, from one sort of the sparse activations
    (``acts.of_latent`` scans them all for every latent)."""
    order = torch.argsort(acts.latents, stable=True)
    rows, values = acts.rows[order], acts.values[order]
    start = 0
    for n in torch.bincount(acts.latents, minlength=acts.d_sae).tolist():
        yield rows[start:start + n], values[start:start + n]
        start += n


def latent_data(acts: LatentActs, doc_index: np.ndarray, k: int, n_bins: int = 30
                ) -> list[LatentData]:
    """:class:`LatentData` of every latent."""
    return [_one_latent(r, v, doc_index, k, n_bins, acts.n_rows) for r, v in by_latent(acts)]


def _one_latent(rows: Tensor, values: Tensor, doc_index: np.ndarray, k: int, n_bins: int,
                n_rows: int) -> LatentData:
    if len(values) == 0:
        return LatentData(0.0, 0.0, [], [], [])
    heights, edges = np.histogram(values.double().numpy(), bins=n_bins)
    top: list[int] = []
    docs: set[int] = set()
    for i in torch.argsort(values, descending=True).tolist():
        row = int(rows[i])
        if doc_index[row] not in docs:
            docs.add(doc_index[row])
            top.append(row)
            if len(top) == k:
                break
    return LatentData(len(values) / n_rows, float(values.max()), heights.astype(float).tolist(),
                      ((edges[:-1] + edges[1:]) / 2).tolist(), top)


def window_rows(doc_index: np.ndarray, row: int, left: int, right: int) -> range:
    """Cache rows of the same document from ``left`` before ``row`` to ``right`` after."""
    lo = row
    while lo > 0 and doc_index[lo - 1] == doc_index[row] and row - lo < left:
        lo -= 1
    hi = row
    while hi + 1 < len(doc_index) and doc_index[hi + 1] == doc_index[row] and hi - row < right:
        hi += 1
    return range(lo, hi + 1)


@torch.no_grad()
def logit_lens_tokens(W_dec: Float[Tensor, "d_sae d_model"],
                      unembed: Float[Tensor, "d_model d_vocab"], k: int, chunk: int = 256
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top ids, top values, bottom ids, bottom values), each ``(d_sae, k)``, of
    ``W_dec @ W_U`` row by row, ``chunk`` latents at a time."""
    parts = []
    for s in range(0, len(W_dec), chunk):
        logits = W_dec[s:s + chunk].float() @ unembed.float()
        top, bot = torch.topk(logits, k), torch.topk(-logits, k)
        parts.append((top.indices, top.values, bot.indices, -bot.values))
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]


# --------------------------------------------------------------------------- records

class SourceInfo(NamedTuple):
    """Who and what a source is, for its records."""

    model_id: str
    layer: int
    set_name: str
    hook_name: str
    dataset: str
    """Where the activation windows come from: ``sae-med:CORPUS (eval split)``."""
    created_at: str


def feature_records(sae: LinearSAE, data: Sequence[LatentData],
                    lens: tuple[Tensor, Tensor, Tensor, Tensor], decode: Any,
                    src: SourceInfo) -> list[Feature]:
    """One :class:`Feature` per latent; ``decode`` maps a token id to its text."""
    W_dec = sae.folded().W_dec.detach().float()
    top_ids, top_vals, bot_ids, bot_vals = lens
    sid = source_id(src.layer, src.set_name)
    return [Feature(
        src.model_id, sid, str(i), d.max_value, d.density,
        [decode(t) for t in top_ids[i].tolist()], top_vals[i].tolist(),
        [decode(t) for t in bot_ids[i].tolist()], bot_vals[i].tolist(),
        d.hist_heights, d.hist_centres, W_dec[i].tolist(), src.hook_name, d.max_value,
        src.created_at) for i, d in enumerate(data)]


def activation_records(acts: LatentActs, data: Sequence[LatentData], info: TokenInfo,
                       doc_ids: Sequence[str], decode: Any, src: SourceInfo,
                       left: int = 30, right: int = 5) -> list[Activation]:
    """The top windows of every latent, each token with the latent's activation."""
    sid = source_id(src.layer, src.set_name)
    doc_index, token_ids = info.doc_index.numpy(), info.token_ids.tolist()
    out = []
    for latent, (d, (rows, vals)) in enumerate(zip(data, by_latent(acts), strict=True)):
        fired = dict(zip(rows.tolist(), vals.tolist(), strict=True))
        for row in d.top_rows:
            window = window_rows(doc_index, row, left, right)
            values = [fired.get(r, 0.0) for r in window]
            peak = max(range(len(values)), key=values.__getitem__)
            out.append(Activation(
                uuid.uuid4().hex, src.model_id, sid, str(latent),
                [decode(token_ids[r]) for r in window], values, values[peak], peak,
                min(values), src.dataset, doc_ids[int(doc_index[row])], src.created_at))
    return out


def source_features(sae: LinearSAE, cache: ActivationCache, tokenizer: Any,
                    unembed: Float[Tensor, "d_model d_vocab"], src: SourceInfo,
                    k_windows: int = 10, k_tokens: int = 10
                    ) -> tuple[list[Feature], list[Activation]]:
    """Features and activation windows of every latent of ``sae`` over ``cache``, from its
    inference encoding (:meth:`~sae_med.sae.base.LinearSAE.encode`, any architecture)."""
    acts = encode_cache(sae.folded(), cache, progress=False)
    info = cache.tokens()
    data = latent_data(acts, info.doc_index.numpy(), k_windows)
    pieces: dict[int, str] = {}

    def decode(t: int) -> str:
        if t not in pieces:
            pieces[t] = tokenizer.decode([t])
        return pieces[t]

    lens = logit_lens_tokens(sae.folded().W_dec.detach(), unembed, k_tokens)
    return (feature_records(sae, data, lens, decode, src),
            activation_records(acts, data, info, cache.doc_ids(), decode, src))


# --------------------------------------------------------------------------- files

def _jsonl(records: Iterable[Any]) -> str:
    return "".join(json.dumps(asdict(r), allow_nan=False) + "\n" for r in records)


def write_source(out: Path, rec: SourceRecords) -> Path:
    """``out/{model}/{source id}/`` as Neuronpedia's exports lay it out; returns it."""
    folder = out / rec.model.id / rec.source.id
    folder.mkdir(parents=True, exist_ok=True)
    for name, one in (("release", rec.release), ("model", rec.model),
                      ("sourceset", rec.sourceset), ("source", rec.source)):
        (folder / f"{name}.jsonl").write_text(_jsonl([one]))
    for kind, records in (("features", rec.features), ("activations", rec.activations),
                          ("explanations", rec.explanations)):
        if not records:
            continue
        (folder / kind).mkdir(exist_ok=True)
        for b, s in enumerate(range(0, len(records), BATCH_SIZE)):
            path = folder / kind / f"batch-{b}.jsonl.gz"
            path.write_bytes(gzip.compress(_jsonl(records[s:s + BATCH_SIZE]).encode(),
                                           compresslevel=5))
    return folder


def read_batches(folder: Path, kind: str) -> list[dict[str, Any]]:
    """Every record of ``folder/kind/batch-*.jsonl.gz``, in batch order."""
    files = sorted((folder / kind).glob("batch-*.jsonl.gz"),
                   key=lambda p: int(p.name.split("-")[1].split(".")[0]))
    return [json.loads(line) for f in files
            for line in gzip.decompress(f.read_bytes()).decode().splitlines()]


# --------------------------------------------------------------------------- a run

def write_neuronpedia(exported: Sequence[ExportedSAE], saes: dict[str, Path], out: Path,
                      inputs: RunInputs, creator: str = "sae-med") -> list[Path]:
    """A Neuronpedia source folder per exported SAE (:mod:`sae_med.report.neuronpedia`), its
    windows from the eval cache of the SAE's :func:`~sae_med.report.exported.window_corpus`
    and its explanations from the run's autointerp, where it explained this SAE."""

    cfg, lens = inputs.config, inputs.lens
    if lens is None:
        raise ExportError("neuronpedia export needs the model's tokenizer and unembedding "
                          "(RunInputs.lens; sae_med.experiment.export_inputs hands them in)")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    written = []
    for e in exported:
        p = e.provenance
        corpus = window_corpus(p.train_corpus, cfg)
        records = _neuronpedia_records(e, cfg, lens, inputs.caches[corpus], corpus, creator,
                                       now, saes[p.sae_id])
        written.append(write_source(out / NEURONPEDIA_DIR, records))
        log.info("neuronpedia source %s: %d features, %d activation windows",
                 written[-1], len(records.features), len(records.activations))
    return written


def _neuronpedia_records(e: ExportedSAE, cfg: Config, lens: ModelLens,
                         cache: ActivationCache, corpus: str, creator: str, now: str,
                         sae_dir: Path) -> SourceRecords:
    p, w = e.provenance, e.provenance.weights
    model_id = slug((w.derived_from or p.model_name).split("/")[-1])
    release = slug(f"sae-med-{cfg.name}")
    src = SourceInfo(model_id, cfg.model.hook_layer, slug(f"{release}-{p.sae_id}"),
                     p.hook_name, f"sae-med:{corpus} (eval split)", now)
    sae = load_sae(sae_dir)
    features, activations = source_features(sae, cache, lens.tokenizer, lens.unembed, src)
    sid = source_id(src.layer, src.set_name)
    original = p.model_name == w.derived_from  # Neuronpedia would run these very weights
    return SourceRecords(
        Release(release, f"sae-med {cfg.name}: "
                f"{ARCHITECTURE_NAMES.get(p.architecture, p.architecture)} SAEs trained on "
                f"{p.train_corpus} activations of {w.describe()}",
                f"sae-med {cfg.name}", creator, creator, [], now),
        Model(model_id, w.derived_from or p.model_name, model_id, False, lens.n_layers,
              lens.d_model, now, now),
        SourceSet(model_id, src.set_name, f"{p.hook_name} - {p.d_sae} ({p.sae_id})",
                  release, creator, now),
        Source(sid, model_id, src.set_name, src.dataset, cache.n_tokens,
               cfg.cache.ctx_len, original,
               f"Trained on the activations of {w.describe()} (sha256 {w.sha256}); "
               f"sae-med {__version__}.", (e.path / CFG_FILENAME).read_text(), now),
        features, activations, _explanations(sae_dir, p, model_id, sid, now))


def _explanations(sae_dir: Path, p: Provenance, model_id: str, sid: str, now: str
                  ) -> list[Explanation]:
    """sae-med autointerp's explanations of this SAE's latents (the rows of its corpus,
    target L0 and seed replicate: autointerp spreads a corpus's latents over its seeds),
    if the run has them."""

    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    from sae_med.interpret.autointerp import replicates_of  # deferred: it imports pandas

    saes = run_saes_dir(sae_dir)
    if saes is None or p.l0_target is None:
        return []
    for demo, kind in ((False, "sae-med-autointerp"), (True, "sae-med-autointerp-demo")):
        path = autointerp_dir(saes.parent, p.l0_target, demo) / LATENTS_NAME
        if path.exists():
            rows = pd.read_csv(path, keep_default_na=False)
            rows = rows[(rows["sae"] == p.train_corpus) & (rows["explanation"] != "")
                        & (replicates_of(rows) == (p.replicate or 0))]
            # an explained latent without held-out windows has no score (an empty cell)
            auroc = pd.to_numeric(rows["detection_auroc"], errors="coerce")
            return [Explanation(uuid.uuid4().hex, model_id, sid, str(int(r.latent)),
                                str(r.explanation), kind, "sae-med autointerp",
                                f"detection AUROC {a:.3f}" if a == a
                                else "detection AUROC: not scored", now)
                    for r, a in zip(rows.itertuples(), auroc, strict=True)]
    return []
