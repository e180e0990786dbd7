"""How much of an SAE's error is linearly predictable from its input ("dark matter").

Engels et al. 2024 (arXiv 2410.14670): with error e = x − x̂, fit by least squares on a
training split of tokens

    e ≈ [x, 1] W        (W: (d_model + 1) × d_model)
    ‖e‖² ≈ [x, 1] w     (w: d_model + 1)

and score on held-out tokens: R² of e (mean over dims and pooled), R² of ‖e‖², and the
nonlinear FVU Σ‖e − ê‖² / Σ‖x − x̄‖² — the part of x's variance neither the SAE nor a
linear map of x explains. A domain SAE that "removes dark matter" lowers the linear part.

Both passes stream: the fit accumulates the normal equations XᵀX, Xᵀe, Xᵀ‖e‖² in float64
batch by batch, and the held-out pass accumulates sums of squares, so the token count is
not bounded by memory. Tokens are split by *document* (:func:`is_train_doc`), so no
document contributes to both sides.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

DEFAULT_RIDGE = 1e-8


def doc_uniform(doc_ids: Int[Tensor, " tokens"], seed: int = 0) -> np.ndarray:
    """u(seed, doc_id) uniform in [0, 1) from the splitmix64 hash of the document id:
    depends only on (doc id, seed), never on the order or batching of tokens."""
    z = doc_ids.detach().cpu().numpy().astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def is_train_doc(doc_ids: Int[Tensor, " tokens"], train_frac: float = 0.5, seed: int = 0
                 ) -> Bool[Tensor, " tokens"]:
    """Deterministic document split: True where the token's document is in the fit split,
    i.e. where :func:`doc_uniform` (seed, doc_id) < train_frac."""
    return torch.from_numpy(doc_uniform(doc_ids, seed) < train_frac).to(doc_ids.device)


class DarkMatterResult(NamedTuple):
    """Held-out scores of the linear predictors of the SAE error."""

    r2_error_mean: float
    """Mean over dims j of 1 − Σ_t (e_tj − ê_tj)² / Σ_t (e_tj − ē_j)²."""
    r2_error_pooled: float
    """1 − Σ‖e − ê‖² / Σ‖e − ē‖² (dims weighted by their error variance)."""
    r2_norm: float
    """R² of ‖e‖² predicted linearly from x: 1 − Σ(‖e‖² − n̂)² / Σ(‖e‖² − mean)²."""
    fvu_linear: float
    """(Σ‖e‖² − Σ‖e − ê‖²) / Σ‖x − x̄‖² = fvu_sae − fvu_nonlinear: the linearly predictable
    part of the error as a share of Var(x)."""
    fvu_nonlinear: float
    """Σ‖e − ê‖² / Σ‖x − x̄‖²: variance left after the SAE *and* the linear map."""
    fvu_sae: float
    """Σ‖e‖² / Σ‖x − x̄‖²: the SAE's own FVU on the same held-out tokens, for scale."""
    n_train: int
    n_eval: int


def _with_bias(x: Tensor) -> Tensor:
    x = x.detach().double()
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


class DarkMatterFit:
    """Streaming least-squares fit of e and ‖e‖² on [x, 1], then held-out scoring.

    Usage: ``add_train`` over the fit split, ``fit()``, ``add_eval`` over the held-out
    split, ``result()``.

    Args:
        ridge: relative ridge λ_rel for numerical stability: the fit solves
            (XᵀX + λ·I') W = Xᵀe with λ = λ_rel · tr(XᵀX)/(d_model + 1) and I' the identity
            without the bias entry (the intercept is not shrunk). The default 1e-8 only
            matters for (near-)singular XᵀX, e.g. fewer tokens than dims or dead dims.
    """

    def __init__(self, ridge: float = DEFAULT_RIDGE):
        self.ridge = ridge
        self.n_train = 0
        self.xtx: Tensor | None = None
        self.xte: Tensor | None = None
        self.xtn: Tensor | None = None
        self.W: Tensor | None = None
        """(d_model + 1, d_model): last row is the bias."""
        self.w_norm: Tensor | None = None
        """(d_model + 1,): predictor of ‖e‖²."""
        self._eval: list[tuple[Tensor, HeldOutSums]] = []
        self.n_eval = 0

    def add_train(self, x: Float[Tensor, "tokens d_model"], e: Float[Tensor, "tokens d_model"]
                  ) -> None:
        """Accumulate the normal equations for one batch of fit-split tokens."""
        if self.W is not None:
            raise RuntimeError("add_train after fit(): make a new DarkMatterFit")
        X = _with_bias(x)
        e = e.detach().double()
        norm2 = e.pow(2).sum(-1)
        if self.xtx is None:
            self.xtx, self.xte, self.xtn = X.T @ X, X.T @ e, X.T @ norm2
        else:
            self.xtx += X.T @ X
            self.xte += X.T @ e
            self.xtn += X.T @ norm2
        self.n_train += x.shape[0]

    def fit(self) -> None:
        """Solve the ridge-stabilised normal equations (see the class docstring)."""
        if self.xtx is None:
            raise ValueError("no training tokens: call add_train first")
        p = self.xtx.shape[0]
        lam = self.ridge * torch.trace(self.xtx) / p
        reg = torch.full((p,), float(lam), dtype=torch.float64, device=self.xtx.device)
        reg[-1] = 0.0
        A = self.xtx + torch.diag(reg)
        rhs = torch.cat([self.xte, self.xtn[:, None]], dim=1)
        sol = torch.linalg.lstsq(A, rhs).solution if self.ridge == 0 else \
            torch.linalg.solve(A, rhs)
        self.W, self.w_norm = sol[:, :-1], sol[:, -1]

    def predict(self, x: Float[Tensor, "tokens d_model"]
                ) -> tuple[Float[Tensor, "tokens d_model"], Float[Tensor, " tokens"]]:
        """(ê, predicted ‖e‖²) for ``x``, float64."""
        if self.W is None:
            raise RuntimeError("call fit() first")
        X = _with_bias(x)
        return X @ self.W, X @ self.w_norm

    def add_eval(self, x: Float[Tensor, "tokens d_model"], e: Float[Tensor, "tokens d_model"],
                 doc_ids: Int[Tensor, " tokens"] | None = None) -> None:
        """Accumulate held-out sums of squares for one batch, per document when
        ``doc_ids`` is given (for :meth:`per_doc` and bootstrap intervals), else as one
        unit. Raw sums in float64: the centred totals are formed in :func:`scores`."""
        e_hat, n_hat = self.predict(x)
        x, e = x.detach().double(), e.detach().double()
        norm2 = e.pow(2).sum(-1)
        if doc_ids is None:
            doc_ids = torch.zeros(x.shape[0], dtype=torch.long)
        docs, inv = torch.unique(doc_ids.cpu(), return_inverse=True)
        inv = inv.to(x.device)

        def by_doc(v: Tensor) -> Tensor:
            out = v.new_zeros((len(docs), *v.shape[1:]))
            return out.index_add_(0, inv, v).cpu()

        self._eval.append((docs, HeldOutSums(
            res_dim=by_doc((e - e_hat).pow(2)), e_sum=by_doc(e), e_sq_dim=by_doc(e.pow(2)),
            x_sum=by_doc(x), x_sq=by_doc(x.pow(2).sum(-1)),
            n_res=by_doc((norm2 - n_hat).pow(2)), n_sum=by_doc(norm2),
            n_sq=by_doc(norm2.pow(2)), n_tokens=by_doc(torch.ones_like(norm2)))))
        self.n_eval += x.shape[0]

    def per_doc(self) -> HeldOutSums:
        """Held-out sums per document (rows in increasing document id; documents split
        across batches are merged). Resampling these rows bootstraps the held-out scores
        over documents *given the fitted map*: the interval does not include the
        variability of the fit itself (see :mod:`sae_med.measure.scoring`). Memory: about
        4 · d_model float64 per held-out document."""
        if not self._eval:
            raise ValueError("no held-out tokens: call add_eval first")
        docs, inv = torch.unique(torch.cat([d for d, _ in self._eval]), return_inverse=True)
        fields = []
        for i in range(len(HeldOutSums._fields)):
            parts = torch.cat([s[i] for _, s in self._eval])
            fields.append(parts.new_zeros((len(docs), *parts.shape[1:]))
                          .index_add_(0, inv, parts))
        return HeldOutSums(*fields)

    def result(self) -> DarkMatterResult:
        """Held-out scores over every token passed to :meth:`add_eval`."""
        if self.n_eval == 0:
            raise ValueError("no held-out tokens: call add_eval first")
        return DarkMatterResult(**scores(self.per_doc()), n_train=self.n_train,
                                n_eval=self.n_eval)


class HeldOutSums(NamedTuple):
    """Held-out sums per document (leading dim ``docs``); float64."""

    res_dim: Tensor
    """Σ_t (e_tj − ê_tj)², per dim."""
    e_sum: Tensor
    e_sq_dim: Tensor
    x_sum: Tensor
    x_sq: Tensor
    """Σ_t ‖x_t‖²."""
    n_res: Tensor
    """Σ_t (‖e_t‖² − n̂_t)²."""
    n_sum: Tensor
    n_sq: Tensor
    n_tokens: Tensor


def scores(per_doc: HeldOutSums) -> dict[str, float]:
    """The held-out scores of :class:`DarkMatterResult` from document sums, pooled over
    documents (the statistic :func:`sae_med.measure.bootstrap.bootstrap_many` resamples)."""
    s = HeldOutSums(*(f.sum(0) for f in per_doc))
    n = s.n_tokens
    sst_dim = s.e_sq_dim - s.e_sum.pow(2) / n
    sst_x = s.x_sq - s.x_sum.pow(2).sum() / n
    sst_norm = s.n_sq - s.n_sum.pow(2) / n
    return {"r2_error_mean": float((1 - s.res_dim / sst_dim).mean()),
            "r2_error_pooled": float(1 - s.res_dim.sum() / sst_dim.sum()),
            "r2_norm": float(1 - s.n_res / sst_norm),
            "fvu_linear": float((s.e_sq_dim.sum() - s.res_dim.sum()) / sst_x),
            "fvu_nonlinear": float(s.res_dim.sum() / sst_x),
            "fvu_sae": float(s.e_sq_dim.sum() / sst_x)}


def dark_matter(x: Float[Tensor, "tokens d_model"], e: Float[Tensor, "tokens d_model"],
                doc_ids: Int[Tensor, " tokens"], train_frac: float = 0.5, seed: int = 0,
                ridge: float = DEFAULT_RIDGE, batch_size: int = 65_536) -> DarkMatterResult:
    """One-shot :class:`DarkMatterFit` on in-memory tensors, split by
    :func:`is_train_doc` (``doc_ids``, ``train_frac``, ``seed``)."""
    train = is_train_doc(doc_ids, train_frac, seed)
    if train.all() or not train.any():
        raise ValueError("the document split left one side empty: need more documents")
    dm = DarkMatterFit(ridge)
    xt, et = x[train], e[train]
    for i in range(0, xt.shape[0], batch_size):
        dm.add_train(xt[i:i + batch_size], et[i:i + batch_size])
    dm.fit()
    xe, ee = x[~train], e[~train]
    de = doc_ids[~train]
    for i in range(0, xe.shape[0], batch_size):
        dm.add_eval(xe[i:i + batch_size], ee[i:i + batch_size], de[i:i + batch_size])
    return dm.result()

