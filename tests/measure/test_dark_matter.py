"""Known-answer tests for sae_med.measure.dark_matter (linear predictability of SAE error)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_med.measure.dark_matter import DarkMatterFit, dark_matter, is_train_doc


def _data(n=4000, d=12, seed=0, tokens_per_doc=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 1
    docs = torch.arange(n) // tokens_per_doc
    return x, docs, g


def test_split_is_deterministic_by_document():
    docs = torch.arange(5000) // 7
    a = is_train_doc(docs, 0.3, seed=4)
    perm = torch.randperm(docs.shape[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(is_train_doc(docs[perm], 0.3, seed=4), a[perm])  # order-free
    per_doc = {}
    for d, t in zip(docs.tolist(), a.tolist(), strict=True):
        assert per_doc.setdefault(d, t) == t  # a document is never split
    frac = np.mean(list(per_doc.values()))
    assert 0.25 < frac < 0.35
    assert not torch.equal(is_train_doc(docs, 0.3, seed=5), a)


def test_linear_error_is_fully_predictable():
    x, docs, g = _data()
    A = torch.randn(x.shape[1], x.shape[1], generator=g, dtype=torch.float64)
    b = torch.randn(x.shape[1], generator=g, dtype=torch.float64)
    e = x @ A + b
    r = dark_matter(x, e, docs, batch_size=500)
    assert r.r2_error_mean == pytest.approx(1.0, abs=1e-9)
    assert r.r2_error_pooled == pytest.approx(1.0, abs=1e-9)
    assert r.fvu_nonlinear == pytest.approx(0.0, abs=1e-9)
    assert r.fvu_sae > 1.0
    assert r.n_train + r.n_eval == x.shape[0] and r.n_train > 1000 and r.n_eval > 1000
    # ‖e‖² is quadratic in x here, so only part of it is linear
    assert r.r2_norm < 0.99


def test_linear_norm_is_predictable():
    """e = sqrt(a·x + c)·u with u a random unit vector: ‖e‖² is exactly linear in x while
    the direction of e is not predictable at all."""
    x, docs, g = _data()
    w = torch.rand(x.shape[1], generator=g, dtype=torch.float64)
    lin = (x - x.min(0).values) @ w + 1.0  # > 0
    u = torch.nn.functional.normalize(torch.randn(x.shape[0], x.shape[1], generator=g,
                                                  dtype=torch.float64), dim=1)
    e = lin.sqrt()[:, None] * u
    r = dark_matter(x, e, docs)
    assert r.r2_norm == pytest.approx(1.0, abs=1e-9)
    assert abs(r.r2_error_pooled) < 0.05  # random directions: the vector is not predictable


def test_noise_error_is_not_predictable():
    x, docs, g = _data(n=20_000, d=16)
    e = torch.randn(x.shape, generator=g, dtype=torch.float64)
    r = dark_matter(x, e, docs, batch_size=3000)
    assert abs(r.r2_error_mean) < 0.05
    assert abs(r.r2_error_pooled) < 0.05
    assert abs(r.r2_norm) < 0.05
    # nothing removed: nonlinear FVU equals the SAE's FVU up to fitting noise
    assert r.fvu_nonlinear == pytest.approx(r.fvu_sae, rel=0.05)


def test_streaming_fit_equals_numpy_lstsq():
    x, _, g = _data(n=1500, d=10)
    e = x @ torch.randn(10, 10, generator=g, dtype=torch.float64) + torch.randn(
        x.shape, generator=g, dtype=torch.float64)
    dm = DarkMatterFit(ridge=0.0)
    for i in range(0, x.shape[0], 128):  # uneven last batch
        dm.add_train(x[i:i + 128], e[i:i + 128])
    dm.fit()
    X = np.hstack([x.numpy(), np.ones((x.shape[0], 1))])
    W, *_ = np.linalg.lstsq(X, e.numpy(), rcond=None)
    w, *_ = np.linalg.lstsq(X, (e.numpy() ** 2).sum(1), rcond=None)
    np.testing.assert_allclose(dm.W.numpy(), W, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dm.w_norm.numpy(), w, rtol=1e-8, atol=1e-10)
    # the default (tiny) ridge barely moves a well-conditioned fit
    dm2 = DarkMatterFit()
    dm2.add_train(x, e)
    dm2.fit()
    np.testing.assert_allclose(dm2.W.numpy(), W, rtol=1e-5, atol=1e-7)


def test_held_out_scores_match_direct_formulas():
    x, docs, g = _data(n=3000, d=6)
    e = 0.5 * x + torch.randn(x.shape, generator=g, dtype=torch.float64)
    train = is_train_doc(docs)
    dm = DarkMatterFit()
    dm.add_train(x[train], e[train])
    dm.fit()
    for i in range(0, int((~train).sum()), 333):
        dm.add_eval(x[~train][i:i + 333], e[~train][i:i + 333])
    r = dm.result()
    xe, ee = x[~train].numpy(), e[~train].numpy()
    e_hat, n_hat = (t.numpy() for t in dm.predict(x[~train]))
    sse = ((ee - e_hat) ** 2).sum(0)
    sst = ((ee - ee.mean(0)) ** 2).sum(0)
    norm2 = (ee**2).sum(1)
    assert r.r2_error_mean == pytest.approx(np.mean(1 - sse / sst), rel=1e-9)
    assert r.r2_error_pooled == pytest.approx(1 - sse.sum() / sst.sum(), rel=1e-9)
    assert r.r2_norm == pytest.approx(
        1 - ((norm2 - n_hat) ** 2).sum() / ((norm2 - norm2.mean()) ** 2).sum(), rel=1e-9)
    sst_x = ((xe - xe.mean(0)) ** 2).sum()
    assert r.fvu_nonlinear == pytest.approx(sse.sum() / sst_x, rel=1e-9)
    assert r.fvu_sae == pytest.approx((ee**2).sum() / sst_x, rel=1e-9)
    assert 0.1 < r.r2_error_pooled < 0.9


def test_misuse_raises():
    dm = DarkMatterFit()
    with pytest.raises(ValueError):
        dm.fit()
    with pytest.raises(RuntimeError):
        dm.predict(torch.zeros(2, 3))
    x, docs, _ = _data(n=20)
    with pytest.raises(ValueError):
        dark_matter(x, x, torch.zeros_like(docs))  # one document: one side empty


def test_per_doc_sums_pool_to_the_result_and_bootstrap_over_documents():
    """Documents split across add_eval batches are merged; the pooled per-document sums
    reproduce result(); resampling documents gives an interval around the estimate that
    narrows with more documents."""
    from sae_med.measure.bootstrap import bootstrap_many
    from sae_med.measure.dark_matter import scores

    def fit(n):
        x, docs, g = _data(n=n, d=6, tokens_per_doc=10)
        e = 0.5 * x + torch.randn(x.shape, generator=g, dtype=torch.float64)
        train = is_train_doc(docs)
        dm = DarkMatterFit()
        dm.add_train(x[train], e[train])
        dm.fit()
        for i in range(0, int((~train).sum()), 77):  # 77: documents straddle batches
            dm.add_eval(x[~train][i:i + 77], e[~train][i:i + 77], docs[~train][i:i + 77])
        return dm, int(torch.unique(docs[~train]).numel())

    dm, n_docs = fit(3000)
    per_doc = dm.per_doc()
    assert per_doc.n_tokens.shape[0] == n_docs and float(per_doc.n_tokens.sum()) == dm.n_eval
    assert torch.all(per_doc.n_tokens == 10)  # merged across batches, never split
    r = dm.result()
    for k, v in scores(per_doc).items():
        assert v == pytest.approx(getattr(r, k), rel=1e-12)
    ci = bootstrap_many(per_doc, scores, 200, seed=3)
    for k, iv in ci.items():
        assert iv.value == pytest.approx(getattr(r, k), rel=1e-12)
        assert iv.low < iv.value < iv.high, k
    big, _ = fit(30_000)
    ci_big = bootstrap_many(big.per_doc(), scores, 200, seed=3)
    width = ci["r2_error_pooled"].high - ci["r2_error_pooled"].low
    assert ci_big["r2_error_pooled"].high - ci_big["r2_error_pooled"].low < width / 2
