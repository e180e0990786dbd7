"""Feature studies on a real (small) cache, and known answers for alignment and matching."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from quantile_saes import quantile_sae

from sae_med.interpret.features import (
    best_concept_latents,
    concept_alignment,
    doc_max_activations,
    encode_cache,
    logit_lens,
    match_dictionaries,
    top_windows,
)
from sae_med.measure.metrics import auroc_matrix
from sae_med.sae.jumprelu import JumpReLUSAE


@pytest.fixture(scope="module")
def cache(small_medical_cache):
    return small_medical_cache


@pytest.fixture(scope="module")
def sae(cache):
    return quantile_sae(cache, 256, 0.95)  # every latent fires on about 5% of the tokens


def test_encode_cache_and_doc_max_match_dense(cache, sae):
    acts = encode_cache(sae, cache, batch_size=300, progress=False)
    dense = sae.encode(cache.activations())
    assert acts.n_rows == cache.n_tokens
    rebuilt = torch.zeros_like(dense)
    rebuilt[acts.rows, acts.latents] = acts.values
    torch.testing.assert_close(rebuilt, dense)
    doc = cache.token_info()[:, 1].long()
    dm = doc_max_activations(acts, cache)
    present = doc.unique()  # the cut at n_tokens can leave a long document without rows
    for d in [int(present[0]), int(present[-1])]:
        torch.testing.assert_close(dm[d], dense[doc == d].amax(0).clamp_min(0))


def test_top_windows_mark_the_peak(cache, sae):
    acts = encode_cache(sae, cache, progress=False)
    latent = int(torch.bincount(acts.latents).argmax())
    wins = top_windows(acts, cache, latent, k=3)
    assert 1 <= len(wins) <= 3
    r, v = acts.of_latent(latent)
    assert wins[0].activation == pytest.approx(float(v.max()))
    info = cache.token_info()
    for w in wins:
        assert w.values[w.peak] == pytest.approx(w.activation)
        assert len(w.tokens) <= 36 and w.peak <= 30
        row = int(torch.nonzero((info[:, 1] == w.doc_index) & (info[:, 2] == w.position)))
        assert w.tokens[w.peak] == int(info[row, 0])
        assert len(w.tokens) <= int((info[:, 1] == w.doc_index).sum())  # one document only
    assert [w.activation for w in wins] == sorted([w.activation for w in wins], reverse=True)


def test_logit_lens_of_an_unembedding_direction(model):
    W_U = model.W_U
    token = model.tokenizer(" fever", add_special_tokens=False).input_ids[0]
    sae = JumpReLUSAE(model.d_model, 4)
    with torch.no_grad():
        sae.W_dec[0] = W_U[:, token] / W_U[:, token].norm()
    lens = logit_lens(sae, W_U, model.tokenizer, 0, k=5)
    assert lens.top_tokens[0] == " fever"
    assert lens.top_values[0] >= lens.top_values[-1] > lens.bottom_values[0]


def test_auroc_matrix_equals_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = np.where(rng.random((60, 3)) < 0.5, 0.0, rng.random((60, 3)))  # many ties
    pos = rng.random((60, 2)) < 0.3
    got = auroc_matrix(scores, pos)
    for lat in range(3):
        for c in range(2):
            p, n = scores[pos[:, c], lat], scores[~pos[:, c], lat]
            want = ((p[:, None] > n[None]).sum() + 0.5 * (p[:, None] == n[None]).sum()) / (
                len(p) * len(n))
            assert got[lat, c] == pytest.approx(want)


def test_alignment_finds_a_planted_concept_and_not_noise():
    rng = np.random.default_rng(1)
    n = 400
    labels = [{"chapter": ("Infectious",) if i % 4 == 0 else ("Neoplasms",)} for i in range(n)]
    ids = [f"doc{i}" for i in range(n)]
    is_inf = np.array([i % 4 == 0 for i in range(n)])
    doc_max = np.zeros((n, 2), dtype=np.float32)
    doc_max[:, 0] = np.where(is_inf, 1.0 + rng.random(n), 0.0)  # fires only on infectious
    doc_max[:, 1] = rng.random(n)  # noise
    al = concept_alignment(torch.from_numpy(doc_max), labels, ids, min_docs=5)
    assert al.concept[0] == "chapter:Infectious"
    assert float(al.auroc[0]) == pytest.approx(1.0) and float(al.f1[0]) == pytest.approx(1.0)
    assert abs(float(al.auroc[1]) - 0.5) < 0.15 and float(al.f1[1]) < 0.7


def test_best_concept_latent_is_the_planted_one_for_each_sae():
    labels = [{"chapter": ("Infectious",)} if i % 3 == 0 else {"chapter": ("Neoplasms",)}
              for i in range(12)]
    infectious = torch.tensor([i % 3 == 0 for i in range(12)]).float()
    doc_max = {"a": torch.stack([torch.rand(12), infectious, torch.zeros(12)], 1),
               "b": torch.stack([torch.zeros(12), torch.zeros(12), 2 * infectious], 1)}
    found = best_concept_latents(doc_max, labels, "chapter:Infectious")
    assert [(f.sae, f.latent, f.auroc, f.n_docs) for f in found] == [
        ("a", 1, 1.0, 4), ("b", 2, 1.0, 4)]
    assert best_concept_latents(doc_max, labels, "chapter:Absent") == []


def test_match_dictionaries_shared_split_new():
    a = JumpReLUSAE(16, 6, generator=torch.Generator().manual_seed(0))
    b = JumpReLUSAE(16, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.cat([a.W_dec[:3].T, torch.ones(16, 1)], 1))
        a.W_dec[5] = q[:, 3]  # orthogonal to a0..a2
        b.W_dec[:] -= (b.W_dec @ a.W_dec[5])[:, None] * a.W_dec[5]  # nothing like a5 in b
        b.W_dec[3] = a.W_dec[0]  # a0 has an exact twin in b
        b.W_dec[4] = torch.nn.functional.normalize(a.W_dec[1] + a.W_dec[2], dim=0)
    m = match_dictionaries(a, b)
    assert m.kind[0] == "shared" and int(m.best[0]) == 3
    assert float(m.cosine[0]) == pytest.approx(1.0)
    assert m.kind[1] == m.kind[2] == "split" and int(m.best[1]) == int(m.best[2]) == 4
    assert m.kind[5] == "new"


def test_match_summary_and_largest_split_known_answers():
    from sae_med.interpret.features import DictionaryMatch, largest_split, match_summary

    m = DictionaryMatch(best=torch.tensor([0, 4, 4, 2, 4, 2]),
                        cosine=torch.tensor([0.9, 0.5, 0.6, 0.5, 0.7, 0.45]),
                        kind=["shared", "split", "split", "split", "split", "split"],
                        corr_best=torch.tensor([0, 4, 1, 2, 3, 3]),
                        corr=torch.tensor([0.8, 0.75, 0.2, 0.5, 0.3, 0.0]))
    alive = torch.tensor([True, True, True, True, True, False])
    s = match_summary(m, alive)
    assert s.live == 5 and s.median_cosine == pytest.approx(0.6)
    assert s.median_correlation == pytest.approx(0.5)
    assert (s.share_correlated, s.share_uncorrelated) == (pytest.approx(0.4),
                                                          pytest.approx(0.4))
    assert s.agreement == pytest.approx(3 / 5) and s.same_index == pytest.approx(2 / 5)
    assert largest_split(m) == (4, [1, 2, 4])
    assert largest_split(m._replace(kind=["shared"] * 6)) is None
    with pytest.raises(ValueError, match="acts_a"):
        match_summary(m._replace(corr=None), alive)


def test_absorption_summary_pairs_parents_by_name():
    """The difference pairs parents by name, whatever order the two tables list them in."""
    import pandas as pd

    from sae_med.interpret.features import absorption_summary

    def table(rates):
        return pd.DataFrame({"parent": list(rates), "absorption_rate": list(rates.values()),
                             "miss_rate": 0.5, "parent_auroc": 0.9})

    a = table({"P": 0.4, "Q": 0.1, "R": 0.3})
    b = table({"R": 0.2, "P": 0.1, "S": 0.9})  # other order; S and Q unpaired
    out = absorption_summary({"a": a, "b": b}, n_boot=200, seed=0).set_index(["SAE", "measure"])
    assert out.loc[("a", "absorption_rate"), "mean over parents"] == pytest.approx(0.8 / 3)
    assert out.loc[("b", "miss_rate"), "mean over parents"] == pytest.approx(0.5)
    diff = out.loc[("a − b", "absorption_rate")]
    assert diff["mean over parents"] == pytest.approx(((0.4 - 0.1) + (0.3 - 0.2)) / 2)
    assert 0.1 - 1e-9 <= diff["95% low"] <= diff["95% high"] <= 0.3 + 1e-9
    assert len(absorption_summary({"a": a}, n_boot=10)) == 3


def test_activation_correlation_matches_dense_pearson():
    from sae_med.interpret.features import LatentActs, activation_correlation

    g = torch.Generator().manual_seed(0)
    n, da, db = 400, 700, 9  # da > one block of 512 latents
    dense_b = torch.rand(n, db, generator=g) * (torch.rand(n, db, generator=g) < 0.2)
    dense_a = torch.rand(n, da, generator=g) * (torch.rand(n, da, generator=g) < 0.1)
    dense_a[:, 600] = 2 * dense_b[:, 4] + 0.5 * (dense_b[:, 4] > 0)  # tracks b4, r < 1
    dense_a[:, 601] = 0.0  # never fires

    def sparse(d):
        r, c = d.nonzero(as_tuple=True)
        return LatentActs(r, c, d[r, c], d.shape[0], d.shape[1])

    best, corr = activation_correlation(sparse(dense_a), sparse(dense_b))
    alive = dense_a.std(0) > 0
    full = np.corrcoef(dense_a[:, alive].T.double().numpy(),
                       dense_b.T.double().numpy())[:int(alive.sum()), int(alive.sum()):]
    np.testing.assert_allclose(corr[alive].numpy(), full.max(1), rtol=1e-5, atol=1e-6)
    assert int(best[600]) == 4 and 0.9 < float(corr[600]) < 1.0
    assert float(corr[601]) == 0.0
    with pytest.raises(ValueError, match="same cache"):
        activation_correlation(sparse(dense_a), sparse(dense_b[:10]))


def test_absorption_known_answer():
    """Parent P has children c1 (its latent 0 fires) and c2 (latent 0 silent, latent 1,
    specific to P, fires instead): P's miss and absorption rates equal c2's share of P's
    held-out documents. Parent Q's latent 2 covers all its children: no absorption."""
    from sae_med.interpret.features import absorption

    rng = np.random.default_rng(0)
    n = 600
    kind = np.array(["c1", "c2", "q", "other"])[np.arange(n) % 4]
    labels = [{"ancestors": ("P",)} if k in ("c1", "c2") else
              {"ancestors": ("Q",)} if k == "q" else {"ancestors": ()} for k in kind]
    ids = [f"doc{i}" for i in range(n)]
    doc_max = np.zeros((n, 4), dtype=np.float32)
    doc_max[:, 0] = np.where(kind == "c1", 2 + rng.random(n), 0.0)
    doc_max[:, 1] = np.where(kind == "c2", 1 + rng.random(n), 0.0)
    doc_max[:, 2] = np.where(kind == "q", 1 + rng.random(n), 0.0)
    doc_max[:, 3] = rng.random(n)  # fires everywhere: never P-specific
    df = absorption(torch.from_numpy(doc_max), labels, ids, min_docs=5).set_index("parent")
    assert set(df.index) == {"P", "Q"}
    half = np.array([hashlib.sha256(f"align:{d}".encode()).digest()[0] & 1 for d in ids])
    c2_share = ((kind == "c2") & (half == 1)).sum() / (np.isin(kind, ["c1", "c2"])
                                                       & (half == 1)).sum()
    p = df.loc["P"]
    assert p.parent_latent == 0 and p.absorbers == [1] and p.n_specific == 1
    assert p.miss_rate == pytest.approx(c2_share) and p.absorption_rate == pytest.approx(c2_share)
    q = df.loc["Q"]
    assert q.parent_latent == 2 and q.miss_rate == 0 and q.absorption_rate == 0
    assert q.parent_auroc == pytest.approx(1.0)


def test_concept_aurocs_and_documents_by_id(cache, sae):
    from sae_med.corpora.registry import documents_by_id
    from sae_med.interpret.features import concept_aurocs

    ids = cache.doc_ids()
    docs = documents_by_id("medical", "eval", ids)
    assert [d.doc_id for d in docs] == ids
    acts = encode_cache(sae, cache, progress=False)
    dm = doc_max_activations(acts, cache)
    labels = [d.labels for d in docs[: dm.shape[0]]]
    chapters = [lab["chapter"][0] for lab in labels if lab.get("chapter")]
    concept = "chapter:" + max(set(chapters), key=chapters.count)
    au, n_pos = concept_aurocs(dm, labels, concept)
    assert n_pos == chapters.count(concept[len("chapter:"):])
    assert au.shape == (sae.d_sae,) and ((au >= 0) & (au <= 1)).all()
    au_none, n_none = concept_aurocs(dm, labels, "chapter:No such chapter")
    assert n_none == 0 and torch.isnan(au_none).all()


# ------------------------------------------------------------------------ dashboards

def test_latent_dashboard_cards_figure_and_file(model, cache, sae, tmp_path):
    from sae_med.interpret.dashboard import (
        cards_html,
        dashboard_figure,
        latent_summary,
        window_html,
        write_dashboard,
    )

    acts = encode_cache(sae, cache, progress=False)
    rate = acts.firing_rate()
    latents = rate.argsort(descending=True)[:3].tolist()
    W_U = model.W_U
    sums = [latent_summary(sae, acts, cache, model.tokenizer, W_U, j, label=f"L{j}")
            for j in latents]
    for s, j in zip(sums, latents, strict=True):
        assert s.density == pytest.approx(float(rate[j]))
        assert sum(s.hist_counts) == int((acts.latents == j).sum())
        assert s.max_activation == pytest.approx(float(acts.of_latent(j)[1].max()))
        assert s.top[0].activation == pytest.approx(s.max_activation)
    w = sums[0].top[0]
    html = window_html(w, model.tokenizer)
    assert html.count("<span") == len(w.tokens) and html.count("outline") == 1
    assert "rgba(255,140,0,1.00)" in html  # the peak is drawn fully opaque
    cards = cards_html(sums, model.tokenizer)
    assert cards.count("<details") == 3 and cards.count(" open>") == 1
    assert all(f"latent {j} — L{j}" in cards for j in latents)
    fig = dashboard_figure(sums)
    assert len(fig.data) == 9 and sum(bool(t.visible) for t in fig.data) == 3
    menu = fig.layout.updatemenus[0].buttons
    assert [sum(b.args[0]["visible"]) for b in menu] == [3, 3, 3]
    path = write_dashboard(tmp_path / "dash.html", sums, model.tokenizer)
    page = path.read_text()
    assert "plotly" in page and page.count("<details") == 3
    with pytest.raises(IndexError, match="256 latents"):
        latent_summary(sae, acts, cache, model.tokenizer, W_U, 256)


def test_phrase_search_finds_the_cache_activations(model, cache, sae):
    """The activations of a document's text, computed alone, are the cache's rows of that
    document (same hook, specials dropped), so phrase search sees what the cache saw."""
    from sae_med.corpora.registry import documents_by_id
    from sae_med.interpret.dashboard import phrase_activations
    from sae_med.interpret.features import search_latents

    index = cache.token_info()[:, 1]
    first = int(index.min())  # the first document with rows (the cut can skip long ones)
    doc = documents_by_id("medical", "eval", cache.doc_ids()[first:first + 1])[0]
    rows = index == first
    x = phrase_activations(model, 13, doc.text)
    cached = cache.activations()[rows]
    if x.shape[0] == cached.shape[0]:  # the document fits the cache's context
        torch.testing.assert_close(x, cached, rtol=2e-3, atol=2e-2)
    else:
        torch.testing.assert_close(x[:cached.shape[0]], cached, rtol=2e-3, atol=2e-2)
    found = search_latents(sae, x, k=5)
    want = sae.encode(cached).amax(0)
    assert found and found[0][0] == int(want.argmax())
    with pytest.raises(ValueError, match="no ordinary tokens"):
        phrase_activations(model, 13, "")
