"""SAEBench outputs: a loader class its custom-SAE interface accepts, and the core metrics in
its ``eval_output`` schema (``eval_type_id`` "core", SAEBench 0.6.0), computed on sae-med's
own eval tokens so SAEBench's plots can place our SAEs beside its baselines.

SAEBench cannot be installed beside our pins (it needs numpy < 2 and datasets < 4), so the
class mirrors its ``BaseSAE`` / ``CustomSAEConfig`` instead of subclassing them. The
metrics follow SAEBench's ``evals/core/main.py`` formulas, quirks included (its ``mse`` is
divided by the batch's token count), so the numbers sit on its scale; the CE and KL
numbers are sae-med's, from the run's ``results.json``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_med import __version__
from sae_med.artifacts import write_json_atomic
from sae_med.cache.activations import ActivationCache
from sae_med.config import Config
from sae_med.report.exported import SAEBENCH_CFG as CFG_NAME
from sae_med.report.exported import SAEBENCH_DIR, ExportedSAE, ExportError, RunInputs
from sae_med.sae.base import LinearSAE
from sae_med.sae.io import load_any_sae

SAEBENCH_VERSION = "0.6.0"
"""The SAEBench release whose interface and schema these files follow."""
BATCH_TOKENS = 2048
"""Rows per batch: SAEBench's default 16 prompts of 128 tokens (its per-batch metrics,
``mse`` and ``relative_reconstruction_bias``, depend on it)."""


@dataclass
class CustomSAEConfig:
    """SAEBench's ``CustomSAEConfig`` fields. Mutable on purpose: SAEBench's loader sets
    attributes on it (``_standardize_sae_cfg``)."""

    model_name: str
    d_in: int
    d_sae: int
    hook_layer: int
    hook_name: str
    context_size: int | None = None
    hook_head_index: int | None = None
    architecture: str = "jumprelu"
    apply_b_dec_to_input: bool = False
    finetuning_scaling_factor: bool = False
    activation_fn_str: str = "relu"
    activation_fn_kwargs: dict[str, Any] = field(default_factory=dict)
    prepend_bos: bool = True
    normalize_activations: str = "none"
    dtype: str = "float32"
    device: str = "cpu"
    model_from_pretrained_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_path: str = ""
    dataset_trust_remote_code: bool = True
    seqpos_slice: tuple[int | None, ...] = (None,)
    training_tokens: int = -100_000
    sae_lens_training_version: str | None = None
    neuronpedia_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CustomSAEConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "seqpos_slice" in known:
            known["seqpos_slice"] = tuple(known["seqpos_slice"])
        return cls(**known)


class SAEBenchSAE(torch.nn.Module):
    """A sae-med SAE of any architecture as SAEBench's custom-SAE interface expects it:
    ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in) with unit-norm rows, ``b_enc``,
    ``b_dec``, ``device``, ``dtype``, ``cfg`` and ``encode`` / ``decode`` / ``forward`` on
    raw activations. Pass it to SAEBench as ``(release, sae)`` in ``selected_saes``."""

    def __init__(self, sae: LinearSAE, cfg: CustomSAEConfig,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__()
        f = sae.folded()
        # SAEBench wants unit decoder rows: latent i is reported as f_i n_i and decoded by
        # W_dec_i / n_i (the same x_hat); its pre-activation is z_i n_i, divided back before
        # the SAE's activation, since a top-k or a shared threshold is not per-latent
        # scale-free the way ReLU and JumpReLU are
        norms = f.W_dec.detach().norm(dim=1)
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        P = torch.nn.Parameter
        self.W_enc = P(f.W_enc.detach() * norms)
        self.b_enc = P(f.b_enc.detach() * norms)
        self.W_dec = P(f.W_dec.detach() / norms[:, None])
        self.b_dec = P(f.b_dec.detach().clone())
        self.register_buffer("norms", norms.clone())
        # the folded SAE for its activation and the state it reads (a threshold, k); its
        # weights are held twice, which an SAE of a few hundred MB can afford
        self.sae = f
        self.cfg = cfg
        self.device, self.dtype = torch.device(device), dtype
        self.to(device=device, dtype=dtype)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """The SAE's inference encoding (:meth:`~sae_med.sae.base.LinearSAE.infer`) of
        ``x``, latent i times its decoder row norm."""
        pre = x @ self.W_enc + self.b_enc
        flat = pre.reshape(-1, pre.shape[-1]) / self.norms  # infer takes (batch, d_sae)
        return (self.sae.infer(flat) * self.norms).reshape(pre.shape)

    def decode(self, acts: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        return self.decode(self.encode(x))

    def to(self, *args: Any, **kwargs: Any) -> SAEBenchSAE:
        """As SAEBench's ``BaseSAE.to``: keeps ``device`` / ``dtype`` in step."""
        super().to(*args, **kwargs)
        if kwargs.get("device") is not None:
            self.device = torch.device(kwargs["device"])
            self.cfg.device = str(self.device)
        if kwargs.get("dtype") is not None:
            self.dtype = kwargs["dtype"]
            self.cfg.dtype = str(self.dtype).removeprefix("torch.")
        return self

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> SAEBenchSAE:
        """From a ``sae-med export --format saebench`` folder."""
        folder = Path(folder)
        cfg = CustomSAEConfig.from_dict(json.loads((folder / CFG_NAME).read_text()))
        return cls(load_any_sae(folder), cfg, device, dtype)


# ----------------------------------------------------------------------------- metrics

class ActivationStats(NamedTuple):
    """SAEBench's sparsity / variance / shrinkage metrics on one set of activations."""

    l0: float
    l1: float
    explained_variance: float
    explained_variance_legacy: float
    mse: float
    cossim: float
    l2_norm_in: float
    l2_norm_out: float
    l2_ratio: float
    relative_reconstruction_bias: float
    feature_density: Float[Tensor, " d_sae"]
    """Fraction of tokens on which each latent fires."""
    consistent_activation_heuristic: Float[Tensor, " d_sae"]
    """Firings per document that has any (SAEBench's per prompt; -1 if it never fires)."""
    n_tokens: int


class Rows(Protocol):
    """Activations ``(n, d_in)`` read a slice at a time: a tensor, or :class:`CacheRows`."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: slice) -> Float[Tensor, "batch d_in"]: ...


class CacheRows:
    """An activation cache's rows as :class:`Rows`, read from disk a batch at a time (the
    eval cache of a large model does not fit in memory at once)."""

    def __init__(self, cache: ActivationCache):
        self.cache = cache

    def __len__(self) -> int:
        return self.cache.n_tokens

    def __getitem__(self, rows: slice) -> Float[Tensor, "batch d_in"]:
        return self.cache.activations(rows.start or 0, min(rows.stop, len(self)))


@torch.no_grad()
def activation_stats(sae: SAEBenchSAE, x: Rows, doc_index: Int[Tensor, " n"],
                     batch_tokens: int = BATCH_TOKENS) -> ActivationStats:
    """SAEBench's formulas, batch by batch of ``batch_tokens`` rows: per-token means of
    ‖x‖, ‖x̂‖, ‖x̂‖/‖x‖ (‖x‖ < 1e-4 counts as 1), L0, L1 (Σf), cos(x, x̂),
    1 − ‖x−x̂‖²/‖x−x̄_batch‖² (legacy) and ‖x−x̂‖²/batch tokens (mse); per-batch means of
    E‖x̂‖²/E⟨x, x̂⟩ (relative reconstruction bias); and explained variance
    1 − E‖x−x̂‖² / (E‖x‖² − (mean over dims of E x_d²)²), as SAEBench 0.6.0 writes it."""
    per_token: dict[str, list[Tensor]] = {k: [] for k in (
        "l0", "l1", "legacy", "mse", "cossim", "l2_in", "l2_out", "ratio")}
    rrb, sum_sq, sq_per_dim, resid = [], [], [], []
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for start in range(0, len(x), batch_tokens):
        xb = x[start:start + batch_tokens].to(sae.device, sae.dtype)
        f = sae.encode(xb)
        xh = sae.decode(f)
        r = (xb - xh).pow(2).sum(-1)
        l2_in, l2_out = xb.norm(dim=-1), xh.norm(dim=-1)
        per_token["l2_in"].append(l2_in)
        per_token["l2_out"].append(l2_out)
        per_token["ratio"].append(l2_out / torch.where(l2_in.abs() < 1e-4, 1.0, l2_in))
        per_token["l0"].append((f != 0).sum(-1).float())
        per_token["l1"].append(f.sum(-1))
        per_token["legacy"].append(1 - r / (xb - xb.mean(0)).pow(2).sum(-1))
        per_token["mse"].append(r / len(xb))
        per_token["cossim"].append((xb / l2_in[:, None] * (xh / l2_out[:, None])).sum(-1))
        rrb.append(l2_out.pow(2).mean() / (xb * xh).sum(-1).mean())
        sum_sq.append(xb.pow(2).sum(-1).mean())
        sq_per_dim.append(xb.pow(2).mean(0))
        resid.append(r.mean())
        fired += (f > 0).sum(0).double().cpu()
    m = {k: torch.cat(v).double().mean().item() for k, v in per_token.items()}
    total_var = torch.stack(sum_sq).mean() - torch.cat(sq_per_dim).mean() ** 2
    density = fired / len(x)
    return ActivationStats(
        m["l0"], m["l1"], (1 - torch.stack(resid).mean() / total_var).item(), m["legacy"],
        m["mse"], m["cossim"], m["l2_in"], m["l2_out"], m["ratio"],
        torch.stack(rrb).double().mean().item(), density.float(),
        _per_document(sae, x, doc_index, fired, batch_tokens), len(x))


@torch.no_grad()
def _per_document(sae: SAEBenchSAE, x: Rows, doc_index: Tensor, fired: Tensor,
                  batch_tokens: int) -> Tensor:
    """Firings per document in which a latent fires at all; -1 where it never does."""
    seen: set[tuple[int, int]] = set()
    for start in range(0, len(x), batch_tokens):
        f = sae.encode(x[start:start + batch_tokens].to(sae.device, sae.dtype)) > 0
        rows, latents = f.nonzero(as_tuple=True)
        docs = doc_index[start:start + batch_tokens][rows.cpu()]
        seen.update(zip(docs.tolist(), latents.cpu().tolist(), strict=True))
    docs_per_latent = torch.zeros_like(fired)
    for _, latent in seen:
        docs_per_latent[latent] += 1
    return torch.where(docs_per_latent > 0, fired / docs_per_latent.clamp_min(1),
                       -1.0).float()


class WeightStats(NamedTuple):
    """SAEBench's weight-based per-latent metrics (all ``(d_sae,)``)."""

    encoder_bias: Tensor
    encoder_norm: Tensor
    encoder_decoder_cosine_sim: Tensor
    max_encoder_cosine_sim: Tensor
    max_decoder_cosine_sim: Tensor


def _max_other_cosine(w: Float[Tensor, "d n"], chunk: int = 512) -> Float[Tensor, " n"]:
    """Per column, the largest cosine similarity with any other column."""
    unit = torch.nn.functional.normalize(w, dim=0)
    out = torch.empty(w.shape[1])
    for s in range(0, w.shape[1], chunk):
        sims = unit[:, s:s + chunk].T @ unit
        sims[torch.arange(len(sims)), torch.arange(s, s + len(sims))] = float("-inf")
        out[s:s + chunk] = sims.max(1).values
    return out


@torch.no_grad()
def weight_stats(sae: SAEBenchSAE) -> WeightStats:
    W_enc, W_dec = sae.W_enc.float().cpu(), sae.W_dec.float().cpu()
    cos = torch.nn.functional.cosine_similarity(W_enc.T, W_dec, dim=1)
    return WeightStats(sae.b_enc.float().cpu(), W_enc.norm(dim=0), cos,
                       _max_other_cosine(W_enc), _max_other_cosine(W_dec.T))


def misc_metrics(acts: ActivationStats, weights: WeightStats) -> dict[str, float]:
    """SAEBench's ``calculate_misc_metrics``."""
    d = acts.feature_density.double()
    total = d.sum()

    def share_over(p: float) -> float:
        return (d[d > p].sum() / total).item() if total > 0 else 0.0

    return {"freq_over_1_percent": (d > 0.01).double().mean().item(),
            "freq_over_10_percent": (d > 0.1).double().mean().item(),
            "normalized_freq_over_1_percent": share_over(0.01),
            "normalized_freq_over_10_percent": share_over(0.1),
            "average_max_encoder_cosine_sim": weights.max_encoder_cosine_sim.mean().item(),
            "average_max_decoder_cosine_sim": weights.max_decoder_cosine_sim.mean().item(),
            "frac_alive": (d > 0).double().mean().item()}


# ----------------------------------------------------------------------------- output

class CoreContext(NamedTuple):
    """What the core output says about where its numbers come from."""

    release: str
    """``sae_lens_release_id``: ``sae-med-{run name}``."""
    sae_id: str
    eval_corpus: str
    llm_dtype: str
    batch_size_prompts: int
    context_size: int
    exclude_special_tokens: bool
    sae_lens_version: str
    unstructured: dict[str, Any]
    """sae-med's own record (weights, version, intervals) in ``eval_result_unstructured``."""


def _nan_to_minus_one(obj: Any) -> Any:
    """SAEBench's ``replace_nans_with_negative_one``: its schema's numbers cannot be NaN
    (a dead SAE's cosine similarity is 0/0)."""
    if isinstance(obj, dict):
        return {k: _nan_to_minus_one(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_minus_one(v) for v in obj]
    return -1 if isinstance(obj, float) and math.isnan(obj) else obj


def core_eval_output(sae: SAEBenchSAE, acts: ActivationStats,
                     metrics: dict[str, dict[str, Any]], ce_tokens: int,
                     ctx: CoreContext) -> dict[str, Any]:
    """One SAE on one eval corpus in SAEBench's core ``eval_output`` schema. ``metrics``:
    the ``results.json`` row's (CE and KL against zero ablation, as SAEBench's)."""
    return _nan_to_minus_one(_core_eval_output(sae, acts, metrics, ce_tokens, ctx))


def _core_eval_output(sae: SAEBenchSAE, acts: ActivationStats,
                      metrics: dict[str, dict[str, Any]], ce_tokens: int,
                      ctx: CoreContext) -> dict[str, Any]:
    v = {k: m["value"] for k, m in metrics.items()}
    w = weight_stats(sae)
    return {
        "eval_type_id": "core",
        "eval_config": {
            "model_name": sae.cfg.model_name, "llm_dtype": ctx.llm_dtype,
            "batch_size_prompts": ctx.batch_size_prompts,
            # sae-med's token counts in SAEBench's batches of BATCH_TOKENS
            "n_eval_reconstruction_batches": -(-int(ce_tokens) // BATCH_TOKENS),
            "n_eval_sparsity_variance_batches": -(-acts.n_tokens // BATCH_TOKENS),
            "dataset": f"sae-med:{ctx.eval_corpus}",
            "context_size": ctx.context_size, "compute_kl": True, "compute_ce_loss": True,
            "compute_l2_norms": True, "compute_sparsity_metrics": True,
            "compute_variance_metrics": True, "compute_featurewise_density_statistics": True,
            "compute_featurewise_weight_based_metrics": True,
            "exclude_special_tokens_from_reconstruction": ctx.exclude_special_tokens,
            "verbose": False},
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": {
            "model_behavior_preservation": {
                "kl_div_score": v["kl_score"], "kl_div_with_ablation": v["kl_zero"],
                "kl_div_with_sae": v["kl_spliced"]},
            "model_performance_preservation": {
                "ce_loss_score": v["loss_recovered"], "ce_loss_with_ablation": v["ce_zero"],
                "ce_loss_with_sae": v["ce_spliced"], "ce_loss_without_sae": v["ce_clean"]},
            "reconstruction_quality": {
                "explained_variance": acts.explained_variance,
                "explained_variance_legacy": acts.explained_variance_legacy,
                "mse": acts.mse, "cossim": acts.cossim},
            "shrinkage": {"l2_norm_in": acts.l2_norm_in, "l2_norm_out": acts.l2_norm_out,
                          "l2_ratio": acts.l2_ratio,
                          "relative_reconstruction_bias": acts.relative_reconstruction_bias},
            "sparsity": {"l0": acts.l0, "l1": acts.l1},
            "token_stats": {"total_tokens_eval_reconstruction": int(ce_tokens),
                            "total_tokens_eval_sparsity_variance": acts.n_tokens},
            "misc_metrics": misc_metrics(acts, w)},
        "eval_result_details": [
            {"index": i, "feature_density": acts.feature_density[i].item(),
             "consistent_activation_heuristic":
                 acts.consistent_activation_heuristic[i].item(),
             **{k: getattr(w, k)[i].item() for k in WeightStats._fields}}
            for i in range(sae.cfg.d_sae)],
        "sae_bench_commit_hash": f"not run by SAEBench: sae-med export (schema of SAEBench "
                                 f"{SAEBENCH_VERSION})",
        "sae_lens_id": ctx.sae_id,
        "sae_lens_release_id": ctx.release,
        "sae_lens_version": ctx.sae_lens_version,
        "sae_cfg_dict": sae.cfg.to_dict(),
        "eval_result_unstructured": ctx.unstructured,
    }


def results_filename(release: str, sae_id: str) -> str:
    """SAEBench's ``get_results_filepath`` naming."""
    return f"{release}_{sae_id}_eval_results.json".replace("/", "_")


# ----------------------------------------------------------------------------- a run

def write_core_results(exported: Sequence[ExportedSAE], results: Path | None, out: Path,
                       inputs: RunInputs) -> list[Path]:
    """SAEBench core results of every exported SAE on each eval corpus of its run, on the
    eval caches handed in (``inputs.caches``) and its results.json's CE and KL."""
    if results is None:
        raise ExportError("--format saebench needs the run's results.json (its CE and KL "
                          "numbers): run `sae-med evaluate CONFIG` first")
    rows = {(r["sae_id"], r["eval_corpus"]): r
            for r in json.loads(results.read_text()).get("rows", [])}
    cfg = inputs.config
    missing = [(e.provenance.sae_id, c) for e in exported for c in cfg.eval_corpora
               if (e.provenance.sae_id, c) not in rows]
    if missing:
        raise ExportError(f"{results} has no row for {missing[0][0]} on {missing[0][1]}: "
                          "rerun `sae-med evaluate CONFIG` for this run")
    written = []
    for corpus in cfg.eval_corpora:
        cache = inputs.caches[corpus]
        acts, doc_index = CacheRows(cache), cache.tokens().doc_index
        for e in exported:
            written.append(_write_core(e, cfg, corpus, acts, doc_index,
                                       rows[(e.provenance.sae_id, corpus)], out))
    return written


def _write_core(e: ExportedSAE, cfg: Config, corpus: str, acts: CacheRows,
                doc_index: Tensor, row: dict[str, Any], out: Path) -> Path:
    p = e.provenance
    sae = SAEBenchSAE.load(e.path)
    release = f"sae-med-{cfg.name}"
    ctx = CoreContext(release, p.sae_id, corpus, cfg.model.dtype, cfg.cache.batch_size,
                      cfg.cache.ctx_len, cfg.cache.exclude_special, version("sae-lens"),
                      {"sae_med": {"version": __version__, "weights": p.weights.to_dict(),
                                   "eval_corpus": corpus, "metrics": row["metrics"]}})
    doc = core_eval_output(sae, activation_stats(sae, acts, doc_index), row["metrics"],
                           row.get("ce_tokens") or 0, ctx)
    path = out / SAEBENCH_DIR / corpus / "core" / results_filename(release, p.sae_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)
    return path
