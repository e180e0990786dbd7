"""Where an SAE's spliced-in error hurts the model, and whether it hurts more than noise.

Every function splices a reconstruction through
:func:`~sae_med.measure.spliced.spliced_losses` on the same token batches the evaluation uses and
reads the per-token damage ΔCE_t = CE_t(spliced) − CE_t(clean):

- :func:`token_damage` keeps, per scored token, its position, ‖x‖ at the hook and token
  id beside ΔCE and KL, and :func:`breakdown` averages the damage within bins of any of
  them (position, ‖x‖ decile, token frequency);
- :func:`dimension_damage` removes the SAE's error in chosen residual dimensions only
  (e.g. Gemma's few massive-activation dimensions) to show how much damage they carry;
- :func:`random_error_damage` splices x + ε with ‖ε_t‖ = ‖e_t‖ but a random direction
  (isotropic, or drawn inside the subspace the SAE's errors span): if the SAE's error
  hurts more than random error of the same size, its direction is the problem;
- :func:`mean_ablation_ce` is the mean-ablation baseline: x → E[x] rather than 0, a
  reference far closer to the clean loss than zero ablation for models whose residual
  has a large mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_med.lm.model import LanguageModel, TokenBatch
from sae_med.measure.metrics import SaeFn, loss_recovered, mean_ablation
from sae_med.measure.spliced import spliced_losses

Reconstruct = Callable[[Tensor], Tensor]
"""Raw activations ``(tokens, d_model)`` → their reconstruction (same shape)."""


class TokenDamage(NamedTuple):
    """One entry per scored token of the batches (position t predicts token t + 1)."""

    position: Int[Tensor, " n"]
    norm: Float[Tensor, " n"]
    """‖x_t‖ at the hook, in model units."""
    token: Int[Tensor, " n"]
    """The token at t, the one whose activation was spliced."""
    delta_ce: Float[Tensor, " n"]
    kl: Float[Tensor, " n"]
    ce_clean: Float[Tensor, " n"]
    ce_zero: Float[Tensor, " n"]
    """CE with the activation zero-ablated (the same for every reconstruction)."""


class Bin(NamedTuple):
    """Mean damage of the tokens in one bin of :func:`breakdown`."""

    label: str
    n_tokens: int
    delta_ce: float
    """Mean ΔCE of the bin's tokens, nats."""
    share: float
    """The bin's part of the total ΔCE (sums to 1 over bins)."""


@torch.no_grad()
def token_damages(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int,
                  reconstructions: Mapping[str, Reconstruct], chunk_tokens: int = 128
                  ) -> dict[str, TokenDamage]:
    """Per-token damage of splicing each reconstruction after block ``layer``; the clean
    and zero-ablated passes and the residual read run once per batch for all of them."""
    parts: dict[str, list[TokenDamage]] = {k: [] for k in reconstructions}
    for batch in batches:
        batch = batch.to(lm.device)
        losses = spliced_losses(lm, batch, layer, reconstructions, chunk_tokens)
        x = lm.resid(batch.tokens, batch.attention_mask, layer)[:, :-1]
        for name, out in losses.items():
            where = out.mask.nonzero(as_tuple=True)
            parts[name].append(TokenDamage(
                position=where[1].cpu(), norm=x[where].norm(dim=-1).float().cpu(),
                token=batch.tokens[:, :-1][where].cpu(),
                delta_ce=(out.ce_spliced - out.ce_clean)[where].cpu(),
                kl=out.kl_spliced[where].cpu(), ce_clean=out.ce_clean[where].cpu(),
                ce_zero=out.ce_zero[where].cpu()))
    return {name: TokenDamage(*(torch.cat(f) for f in zip(*p, strict=True)))
            for name, p in parts.items()}


def token_damage(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int,
                 reconstruct: SaeFn, chunk_tokens: int = 128) -> TokenDamage:
    """Per-token damage of splicing ``reconstruct`` after block ``layer``."""
    return token_damages(lm, batches, layer, {"sae": reconstruct}, chunk_tokens)["sae"]


def breakdown(damage: TokenDamage, key: Tensor, edges: Sequence[float],
              labels: Sequence[str] | None = None) -> list[Bin]:
    """Mean ΔCE of the tokens whose ``key`` falls in each ``[edges[i], edges[i+1])`` (the
    last bin closed). ``key`` is per token, e.g. ``damage.position`` or ``damage.norm``."""
    key = key.double()
    total = float(damage.delta_ce.double().sum())
    bins = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        inside = (key >= lo) & ((key < hi) if i < len(edges) - 2 else (key <= hi))
        d = damage.delta_ce[inside].double()
        label = labels[i] if labels else f"[{lo:g}, {hi:g}{']' if i == len(edges) - 2 else ')'}"
        bins.append(Bin(label, int(inside.sum()), float(d.mean()) if len(d) else float("nan"),
                        float(d.sum()) / total if total else float("nan")))
    return bins


def decile_edges(values: Tensor) -> list[float]:
    """Edges of the ten equal-count bins of ``values`` (for :func:`breakdown`)."""
    return np.quantile(values.double().numpy(), np.linspace(0, 1, 11)).tolist()


def token_frequency(token_ids: Int[Tensor, " n"], vocab: int) -> Float[Tensor, " vocab"]:
    """Relative frequency of each token id in ``token_ids`` (e.g. a train cache's tokens)."""
    counts = torch.bincount(token_ids.long(), minlength=vocab).double()
    return counts / counts.sum()


class DimensionDamage(NamedTuple):
    """Mean ΔCE with the SAE's error kept everywhere, and removed in ``dims`` only."""

    dims: list[int]
    delta_ce_full: float
    delta_ce_without: float
    """ΔCE when the reconstruction is corrected to x in ``dims`` (error elsewhere kept)."""
    error_share: float
    """Share of the error's squared norm that lies in ``dims``."""


def massive_dimensions(x: Float[Tensor, "tokens d_model"], k: int = 4) -> list[int]:
    """The ``k`` residual dimensions with the largest mean |x| (the massive activations)."""
    return torch.topk(x.abs().mean(0), k).indices.sort().values.tolist()


def _corrected(reconstruct: Reconstruct, dims: Sequence[int]) -> Reconstruct:
    """``reconstruct`` with its output set to x in ``dims`` (no error there)."""
    idx = torch.tensor(list(dims), dtype=torch.long)

    def fn(x: Tensor) -> Tensor:
        x_hat = reconstruct(x).clone()
        x_hat[:, idx] = x[:, idx]
        return x_hat

    return fn


@torch.no_grad()
def _error_share(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int,
                 reconstruct: Reconstruct, dims: Sequence[int]) -> float:
    """Share of the error's squared norm (kept positions) that lies in ``dims``."""
    idx = torch.tensor(list(dims), dtype=torch.long)
    num = den = 0.0
    for batch in batches:
        batch = batch.to(lm.device)
        x = lm.resid(batch.tokens, batch.attention_mask, layer)[batch.keep]
        e = (x - reconstruct(x)).double()
        num += float((e[:, idx] ** 2).sum())
        den += float((e ** 2).sum())
    return num / den if den else float("nan")


def dimension_damage(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int,
                     reconstruct: Reconstruct, dims: Sequence[int],
                     chunk_tokens: int = 128) -> DimensionDamage:
    """How much of the damage the error in residual dimensions ``dims`` carries."""
    d = token_damages(lm, batches, layer, {"sae": reconstruct,
                                           "without": _corrected(reconstruct, dims)},
                      chunk_tokens)
    return _dimension_result(lm, batches, layer, reconstruct, dims, d)


def _dimension_result(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int,
                      reconstruct: Reconstruct, dims: Sequence[int],
                      d: Mapping[str, TokenDamage]) -> DimensionDamage:
    return DimensionDamage(list(dims), _mean(d["sae"].delta_ce), _mean(d["without"].delta_ce),
                           _error_share(lm, batches, layer, reconstruct, dims))


def random_error(reconstruct: Reconstruct, seed: int,
                 basis: Float[Tensor, "d_model k"] | None = None) -> Reconstruct:
    """x → x + ε with ‖ε_t‖ = ‖x_t − reconstruct(x_t)‖ and ε's direction random: uniform
    on the sphere, or uniform within the column span of the orthonormal ``basis``."""

    g = torch.Generator(device="cpu").manual_seed(seed)  # advances across batches

    def fn(x: Tensor) -> Tensor:
        norm = (x - reconstruct(x)).norm(dim=-1, keepdim=True)
        k = x.shape[-1] if basis is None else basis.shape[1]
        z = torch.randn(x.shape[0], k, generator=g, dtype=torch.float64)
        if basis is not None:
            z = z @ basis.double().T
        direction = (z / z.norm(dim=-1, keepdim=True).clamp_min(1e-30)).to(x)
        return x + norm * direction

    return fn


def error_subspace(errors: Float[Tensor, "tokens d_model"], energy: float = 0.9
                   ) -> Float[Tensor, "d_model k"]:
    """Orthonormal basis of the top principal directions of the SAE's errors (uncentred)
    holding ``energy`` of their squared norm."""
    _, s, vh = torch.linalg.svd(errors.double(), full_matrices=False)
    if not float(s.sum()):  # no error at all: any direction will do (ε is 0 anyway)
        return torch.eye(errors.shape[1])[:, :1]
    cum = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    k = int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype))) + 1
    return vh[:k].T.float()


class RandomErrorDamage(NamedTuple):
    sae: float
    """Mean ΔCE of the SAE's own error."""
    isotropic: float
    """Mean ΔCE of random error of the same per-token norm, any direction."""
    in_subspace: float
    """Same, with directions drawn inside the SAE errors' principal subspace."""
    subspace_dim: int


def random_error_damage(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int,
                        reconstruct: Reconstruct, errors: Float[Tensor, "tokens d_model"],
                        seed: int = 0, chunk_tokens: int = 128) -> RandomErrorDamage:
    """The SAE's ΔCE beside random errors of the same per-token size (``errors``: a
    sample of the SAE's errors, e.g. from the eval cache, defines the subspace)."""
    basis = error_subspace(errors)
    d = token_damages(lm, batches, layer, {"sae": reconstruct,
                                           **_random_variants(reconstruct, seed, basis)},
                      chunk_tokens)
    return _random_result(d, basis)


def _random_variants(reconstruct: Reconstruct, seed: int, basis: Tensor
                     ) -> dict[str, Reconstruct]:
    return {"isotropic": random_error(reconstruct, seed),
            "in_subspace": random_error(reconstruct, seed, basis)}


def _random_result(d: Mapping[str, TokenDamage], basis: Tensor) -> RandomErrorDamage:
    return RandomErrorDamage(sae=_mean(d["sae"].delta_ce),
                             isotropic=_mean(d["isotropic"].delta_ce),
                             in_subspace=_mean(d["in_subspace"].delta_ce),
                             subspace_dim=int(basis.shape[1]))


def mean_ablation_ce(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int,
                     mean: Float[Tensor, " d_model"], chunk_tokens: int = 128) -> float:
    """Mean ΔCE of replacing x by the activation mean E[x] at every kept position."""
    return _mean(token_damage(lm, batches, layer, mean_ablation(mean), chunk_tokens).delta_ce)


def _mean(t: Tensor) -> float:
    return float(t.double().mean()) if len(t) else float("nan")


class DamageReport(NamedTuple):
    """:func:`diagnose_sae`'s findings for one SAE on one eval corpus (ΔCE in nats)."""

    ce_clean: float
    ce_spliced: float
    ce_zero: float
    ce_mean_ablation: float
    loss_recovered_vs_zero: float
    loss_recovered_vs_mean: float
    """1 − ΔCE_sae / ΔCE_mean-ablation: not compressed by an extreme zero baseline."""
    by_position: list[Bin]
    by_norm_decile: list[Bin]
    by_frequency: list[Bin]
    """Quintiles of the spliced token's frequency in the training cache (rarest first)."""
    massive: DimensionDamage
    random: RandomErrorDamage
    n_tokens: int
    mean_share: float = float("nan")
    """‖E[x]‖ / E‖x‖ on the training sample: how much of the residual is one constant."""


class Subject(NamedTuple):
    """One SAE for :func:`diagnose_saes`."""

    reconstruct: Reconstruct
    train_x: Float[Tensor, "tokens d_model"]
    """A sample of its training activations (mean, massive dimensions, error subspace)."""
    train_tokens: Int[Tensor, " tokens"]
    """The token ids of its training cache (token frequencies)."""


@torch.no_grad()
def diagnose_sae(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int,
                 reconstruct: Reconstruct, train_x: Float[Tensor, "tokens d_model"],
                 train_tokens: Int[Tensor, " tokens"], seed: int = 0) -> DamageReport:
    """Every diagnostic of this module for one SAE (see :func:`diagnose_saes`)."""
    return diagnose_saes(lm, batches, layer, {"sae": Subject(reconstruct, train_x,
                                                             train_tokens)}, seed)["sae"]


@torch.no_grad()
def diagnose_saes(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int,
                  subjects: Mapping[str, Subject], seed: int = 0) -> dict[str, DamageReport]:
    """Every diagnostic of this module for each SAE of ``subjects``, all splices of all of
    them sharing one clean and one zero-ablated pass per batch."""
    variants, bases, massive = {}, {}, {}
    for name, s in subjects.items():
        bases[name] = error_subspace(s.train_x - s.reconstruct(s.train_x))
        massive[name] = massive_dimensions(s.train_x)
        variants |= {f"{name}/{k}": fn for k, fn in {
            "sae": s.reconstruct, "mean": mean_ablation(s.train_x.mean(0)),
            "without": _corrected(s.reconstruct, massive[name]),
            **_random_variants(s.reconstruct, seed, bases[name])}.items()}
    damages = token_damages(lm, batches, layer, variants)
    return {name: _report(lm, batches, layer, s, massive[name], bases[name],
                          {k.removeprefix(f"{name}/"): v for k, v in damages.items()
                           if k.startswith(f"{name}/")})
            for name, s in subjects.items()}


def _report(lm: LanguageModel, batches: Sequence[TokenBatch], layer: int, s: Subject,
            massive: list[int], basis: Tensor, damages: Mapping[str, TokenDamage]
            ) -> DamageReport:
    d = damages["sae"]
    ce_clean = _mean(d.ce_clean)
    ce_sae, ce_zero = ce_clean + _mean(d.delta_ce), _mean(d.ce_zero)
    ce_mean = ce_clean + _mean(damages["mean"].delta_ce)
    freq = token_frequency(s.train_tokens, int(max(s.train_tokens.max(), d.token.max())) + 1)
    log_f = torch.log10(freq[d.token].clamp_min(1e-12))
    positions = [1, 2, 4, 8, 16, 32, 64, int(d.position.max()) + 1]
    return DamageReport(
        ce_clean=ce_clean, ce_spliced=ce_sae, ce_zero=ce_zero, ce_mean_ablation=ce_mean,
        loss_recovered_vs_zero=loss_recovered(ce_clean, ce_sae, ce_zero),
        loss_recovered_vs_mean=loss_recovered(ce_clean, ce_sae, ce_mean),
        by_position=breakdown(d, d.position, sorted(set(positions))),
        by_norm_decile=breakdown(d, d.norm, decile_edges(d.norm),
                                 [f"decile {i + 1}" for i in range(10)]),
        by_frequency=breakdown(d, log_f, np.quantile(log_f.numpy(), np.linspace(0, 1, 6)),
                               [f"quintile {i + 1}" for i in range(5)]),
        massive=_dimension_result(lm, batches, layer, s.reconstruct, massive, damages),
        random=_random_result(damages, basis), n_tokens=len(d.delta_ce),
        mean_share=float(s.train_x.mean(0).norm() / s.train_x.norm(dim=1).mean()))


def bins_frame(reports: Mapping[str, DamageReport], field: str) -> Any:
    """Long table of one breakdown (``by_position``, ``by_norm_decile``, ``by_frequency``)
    of several reports: columns sae, bin, n_tokens, delta_ce, share."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    return pd.DataFrame([{"sae": name, "bin": b.label, "n_tokens": b.n_tokens,
                          "delta_ce": b.delta_ce, "share": b.share}
                         for name, r in reports.items() for b in getattr(r, field)])


def summary_frame(reports: Mapping[str, DamageReport]) -> Any:
    """One row per report: the CE baselines, both loss-recovered scores, the
    massive-dimension and random-error comparisons."""
    # deferred: pandas takes ~0.5 s to import; only the tables need it
    import pandas as pd

    return pd.DataFrame([{
        "sae": name, "tokens": r.n_tokens, "CE clean": r.ce_clean, "CE SAE": r.ce_spliced,
        "ΔCE SAE": r.ce_spliced - r.ce_clean, "CE zero": r.ce_zero,
        "CE mean-ablation": r.ce_mean_ablation, "recovered vs zero": r.loss_recovered_vs_zero,
        "recovered vs mean": r.loss_recovered_vs_mean,
        "ΔCE random (isotropic)": r.random.isotropic,
        "ΔCE random (error subspace)": r.random.in_subspace,
        "massive dims": str(r.massive.dims), "their error share": r.massive.error_share,
        "ΔCE without their error": r.massive.delta_ce_without,
        "‖E[x]‖ / E‖x‖ (train)": r.mean_share,
    } for name, r in reports.items()]).set_index("sae")
