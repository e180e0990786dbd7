"""Synthetic activations with planted sparse features: SAEs on data whose answer is known.

:func:`plant` draws the truth of a :class:`SyntheticSpec` (unit directions, firing
frequencies, magnitudes, correlated pairs and parent/child pairs) and :func:`sample`
draws activations from it, so a trained SAE can be scored against what it should have
found: :func:`recovery` (best decoder cosine per planted feature), :func:`absorption_table`
(the package's :func:`sae_med.interpret.features.absorption` with rows as documents and the planted
parents as concepts) and :func:`truth_sae`, the SAE that knows the answer (optionally
absorbing children into parents on purpose), a reference point for every metric.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_med.config import Config, ConfigError
from sae_med.interpret.features import absorption
from sae_med.measure.metrics import fve
from sae_med.sae.jumprelu import JumpReLUSAE

SYNTHETIC_CORPUS = "synthetic"
"""The ``train_corpus`` name synthetic SAEs are trained and saved under."""


@dataclass(frozen=True)
class SyntheticSpec:
    """What to plant. Feature ids run parents, children, correlated pairs, then the rest."""

    d_model: int = 64
    """Width of the activations."""
    n_features: int = 48
    """Planted features (more than ``d_model`` puts them in superposition)."""
    freq_min: float = 0.01
    """Lowest firing probability of a feature (log-uniform between min and max)."""
    freq_max: float = 0.08
    """Highest firing probability of a feature."""
    magnitude: float = 1.0
    """Mean magnitude of an active feature."""
    magnitude_spread: float = 0.2
    """Standard deviation of an active feature's magnitude, relative to ``magnitude``."""
    n_hierarchies: int = 4
    """Parent/child pairs: the child fires only when its parent fires."""
    child_given_parent: tuple[float, ...] = (0.3,)
    """P(child | parent) per pair (one value repeats for every pair)."""
    n_correlated: int = 4
    """Correlated pairs: the second copies the first's firing with ``co_fire`` chance."""
    co_fire: float = 0.8
    """Chance that the second feature of a correlated pair fires when the first does."""
    noise: float = 0.02
    """Standard deviation of isotropic Gaussian noise per dimension."""
    seed: int = 0
    """Seed of the directions, frequencies and magnitudes."""

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"synthetic.{field}: {message}")

        check(self.d_model > 0 and self.n_features > 0, "d_model", "sizes must be > 0")
        check(0 < self.freq_min <= self.freq_max < 1, "freq_min",
              "need 0 < freq_min <= freq_max < 1")
        check(self.magnitude > 0 and self.magnitude_spread >= 0, "magnitude",
              "magnitude must be > 0 and its spread >= 0")
        check(2 * (self.n_hierarchies + self.n_correlated) <= self.n_features,
              "n_hierarchies", "parent/child and correlated pairs need 2 features each")
        check(len(self.child_given_parent) in (1, self.n_hierarchies)
              and all(0 < p <= 1 for p in self.child_given_parent), "child_given_parent",
              "one probability in (0, 1], or one per pair")
        check(0 <= self.co_fire <= 1 and self.noise >= 0, "co_fire",
              "co_fire must be in [0, 1] and noise >= 0")

    def child_probs(self) -> tuple[float, ...]:
        """P(child | parent) of each parent/child pair."""
        p = self.child_given_parent
        return p * self.n_hierarchies if len(p) == 1 else p


@dataclass(frozen=True)
class SyntheticTruth:
    """The planted answer: what a perfect dictionary would hold."""

    spec: SyntheticSpec
    directions: Float[Tensor, "n_features d_model"]
    """Unit direction of each feature."""
    frequency: Float[Tensor, " n_features"]
    """Marginal firing probability of each feature (a child's is parent's × P(child|parent))."""
    hierarchy: tuple[tuple[int, int], ...]
    """(parent, child) feature ids."""
    correlated: tuple[tuple[int, int], ...]
    """(leader, follower) feature ids."""


class SyntheticBatch(NamedTuple):
    """Activations and the feature activity that made them."""

    acts: Float[Tensor, "batch d_model"]
    codes: Float[Tensor, "batch n_features"]
    """Magnitude of each feature on each row (0 where it is silent)."""


def plant(spec: SyntheticSpec) -> SyntheticTruth:
    """Draw directions and frequencies for ``spec`` (deterministic in ``spec.seed``)."""
    g = torch.Generator().manual_seed(spec.seed)
    directions = torch.randn(spec.n_features, spec.d_model, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    lo, hi = torch.log(torch.tensor(spec.freq_min)), torch.log(torch.tensor(spec.freq_max))
    frequency = torch.exp(lo + (hi - lo) * torch.rand(spec.n_features, generator=g))
    h = spec.n_hierarchies
    hierarchy = tuple((i, h + i) for i in range(h))
    for (parent, child), p in zip(hierarchy, spec.child_probs(), strict=True):
        frequency[child] = frequency[parent] * p
    correlated = tuple((2 * h + 2 * i, 2 * h + 2 * i + 1) for i in range(spec.n_correlated))
    for leader, follower in correlated:  # marginal of copying or drawing on its own
        frequency[follower] = (spec.co_fire * frequency[leader]
                               + (1 - spec.co_fire) * frequency[follower])
    return SyntheticTruth(spec, directions, frequency, hierarchy, correlated)


Role = Literal["parent", "child", "correlated pair", "independent"]
"""What part a planted feature plays (a correlated pair's leader and follower alike)."""


def feature_roles(truth: SyntheticTruth) -> tuple[Role, ...]:
    """The role of each planted feature, by feature id."""
    roles: list[Role] = ["independent"] * truth.spec.n_features
    for parent, child in truth.hierarchy:
        roles[parent], roles[child] = "parent", "child"
    for leader, follower in truth.correlated:
        roles[leader] = roles[follower] = "correlated pair"
    return tuple(roles)


def true_l0(batch: SyntheticBatch) -> float:
    """Mean number of planted features active per row: the L0 of the truth."""
    return float((batch.codes > 0).sum(1).float().mean())


def sample(truth: SyntheticTruth, n_rows: int, seed: int = 0) -> SyntheticBatch:
    """``n_rows`` activations x = sum_i m_i d_i + noise, with feature i active (m_i > 0)
    independently at its frequency, except that a child fires only with its parent (at
    P(child | parent)) and a follower copies its leader's firing with ``co_fire`` chance."""
    spec = truth.spec
    g = torch.Generator().manual_seed(spec.seed * 1_000_003 + seed + 1)  # apart from plant's
    own = truth.frequency.clone()  # the chance of firing on its own, without copying
    if spec.co_fire < 1:
        for leader, follower in truth.correlated:
            own[follower] = ((truth.frequency[follower] - spec.co_fire * own[leader])
                             / (1 - spec.co_fire))
    active = torch.rand(n_rows, spec.n_features, generator=g) < own
    for (parent, child), p in zip(truth.hierarchy, spec.child_probs(), strict=True):
        active[:, child] = active[:, parent] & (torch.rand(n_rows, generator=g) < p)
    for leader, follower in truth.correlated:
        copy = torch.rand(n_rows, generator=g) < spec.co_fire
        active[:, follower] = torch.where(copy, active[:, leader], active[:, follower])
    mags = spec.magnitude * (1 + spec.magnitude_spread
                             * torch.randn(n_rows, spec.n_features, generator=g))
    codes = active * mags.clamp_min(0.1 * spec.magnitude)  # magnitudes stay positive
    acts = codes @ truth.directions + spec.noise * torch.randn(n_rows, spec.d_model,
                                                               generator=g)
    return SyntheticBatch(acts, codes)


def truth_sae(truth: SyntheticTruth, absorbed: tuple[tuple[int, int], ...] = ()
              ) -> JumpReLUSAE:
    """The SAE that knows the answer: one latent per planted feature, decoder rows the
    planted directions, encoder their pseudo-inverse (exact when ``n_features <= d_model``).
    For each (parent, child) in ``absorbed`` the parent's latent is switched off wherever
    the child fires (its encoder reads parent − 4 × child: enough to silence a parent of
    magnitude 1.6 beside a child of 0.4, small enough not to amplify the noise of silent
    rows past the threshold): the child has absorbed it."""
    d = truth.directions
    W_enc = torch.linalg.pinv(d)  # (d_model, n_features): x @ W_enc gives the codes
    for parent, child in absorbed:
        W_enc[:, parent] -= 4 * W_enc[:, child]
    sae = JumpReLUSAE(truth.spec.d_model, truth.spec.n_features,
                      init_threshold=0.5 * truth.spec.magnitude)
    with torch.no_grad():
        sae.W_dec.copy_(d)
        sae.W_enc.copy_(W_enc)
    return sae


class Recovery(NamedTuple):
    """How well a dictionary holds each planted direction."""

    best_cosine: Float[Tensor, " n_features"]
    """Largest cosine between the planted direction and any decoder row."""
    best_latent: Int[Tensor, " n_features"]
    """The latent whose decoder row that is."""
    recovered: Bool[Tensor, " n_features"]
    """best_cosine >= the recovery bar."""
    n_at_bar: Int[Tensor, " n_features"]
    """Latents whose decoder row reaches the bar: more than one is the feature split (or
    duplicated) across latents."""
    at: float = 0.9
    """The recovery bar (a cosine)."""

    @property
    def share(self) -> float:
        """Share of planted features recovered."""
        return float(self.recovered.float().mean())


def recovery(W_dec: Float[Tensor, "d_sae d_model"], truth: SyntheticTruth, at: float = 0.9
             ) -> Recovery:
    """For every planted feature i: max_j cos(W_dec[j], d_i), the latent j attaining it,
    whether it reaches ``at`` (0.9: the usual bar for 'recovered') and how many latents
    do."""
    dec = W_dec.detach().float()
    cos = (truth.directions @ dec.T) / dec.norm(dim=1).clamp_min(1e-12)  # (n_features, d_sae)
    best, latent = cos.max(dim=1)
    return Recovery(best, latent, best >= at, (cos >= at).sum(dim=1), at)


def row_labels(truth: SyntheticTruth, codes: Float[Tensor, "batch n_features"]
               ) -> list[dict[str, list[str]]]:
    """Per row, the planted parents active on it (``{"parents": ["feature 3"]}``): rows
    play the documents of :func:`sae_med.interpret.features.absorption`, parents its concepts."""
    parents = [p for p, _ in truth.hierarchy]
    on = (codes[:, parents] > 0).tolist()
    return [{"parents": [f"feature {p}" for p, a in zip(parents, row, strict=True) if a]}
            for row in on]


def absorption_table(sae: JumpReLUSAE, truth: SyntheticTruth, batch: SyntheticBatch,
                     min_docs: int = 5) -> Any:
    """:func:`sae_med.interpret.features.absorption` of ``sae`` on ``batch`` with each row a
    document and each planted parent a concept, plus per parent its ``child`` feature and
    ``child_share``: the share of the parent's rows where the child fires, which is the
    absorption rate of an SAE whose child latent absorbed the parent completely."""
    with torch.no_grad():
        doc_max = sae.encode(batch.acts)
    ids = [f"row {i}" for i in range(len(batch.acts))]
    table = absorption(doc_max, row_labels(truth, batch.codes), ids, key="parents",
                       min_docs=min_docs)
    child_of = {f"feature {p}": c for p, c in truth.hierarchy}
    table["child"] = table.parent.map(child_of)
    on = batch.codes > 0
    table["child_share"] = [float(on[on[:, int(p.split()[1])], c].float().mean())
                            for p, c in zip(table.parent, table.child, strict=True)]
    return table


class SAEScore(NamedTuple):
    """An SAE scored on synthetic rows against the truth."""

    fve: float
    l0: float
    dead_frac: float
    """Share of latents that never fire on the rows."""
    recovered_share: float


def score_sae(sae: JumpReLUSAE, truth: SyntheticTruth, batch: SyntheticBatch, at: float = 0.9
              ) -> SAEScore:
    """FVE (:func:`sae_med.measure.metrics.fve`), mean L0, dead share and recovered share."""
    with torch.no_grad():
        out = sae(batch.acts)
    fires = out.acts > 0
    return SAEScore(fve(batch.acts, out.x_hat), float(fires.sum(1).float().mean()),
                    float((~fires.any(0)).float().mean()),
                    recovery(sae.W_dec, truth, at).share)


def synthetic_config(cfg: Config, width: int, l0_targets: tuple[float, ...], n_tokens: int,
                     recipe: Config | None = None) -> Config:
    """``cfg`` (seed, device, run folder) with the SAE and training recipe of ``recipe``
    (default: ``cfg``'s own) at a synthetic size: ``width`` latents, ``l0_targets``,
    ``n_tokens`` per SAE, one replicate, no snapshots; dead latents counted over the last
    quarter of the run, as the configs do."""
    recipe = recipe or cfg
    sae = dataclasses.replace(recipe.sae, width=width, l0_targets=tuple(l0_targets), seeds=1)
    train = dataclasses.replace(recipe.train, n_tokens=n_tokens, source="cache",
                                device=cfg.train.device, snapshot_tokens=(),
                                dead_window_tokens=max(1, n_tokens // 4),
                                norm_batches=min(recipe.train.norm_batches, 4))
    return dataclasses.replace(cfg, sae=sae, train=train)
