"""Known-answer tests for sae_med.measure.metrics (reconstruction, firing, ranking, spliced CE).

The CE tests use a tiny randomly initialised Gemma-3 (3 blocks, d_model 32, vocab 97) as an
HF ``Gemma3ForCausalLM`` plus the same weights converted into a TransformerLens
``HookedTransformer`` (checked to agree), so they run in seconds; a ``slow`` test repeats
the TL-vs-HF check on the real embedded Gemma-3-270M when its cache already exists.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_med.measure.metrics import (
    TYPICAL,
    DocCE,
    ReconstructionAccumulator,
    concat_doc_stats,
    delta_ce,
    density_histogram,
    fve,
    fve_uncentered,
    kl_score,
    l0,
    loss_recovered,
    metrics_from_doc_sums,
    mse,
    relative_reconstruction_bias,
    summarize_ce,
)
from sae_med.measure.spliced import spliced_losses


def _x(n=64, d=8, seed=0, offset=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + offset


# ------------------------------------------------------------------ one-batch metrics

def test_identity_reconstruction():
    x = _x()
    assert fve(x, x) == pytest.approx(1.0, abs=1e-12)
    assert fve_uncentered(x, x) == pytest.approx(1.0, abs=1e-12)
    assert mse(x, x) == 0.0
    assert relative_reconstruction_bias(x, x) == pytest.approx(1.0, abs=1e-12)


def test_zero_reconstruction():
    x = _x()
    zero = torch.zeros_like(x)
    assert fve(x, zero) == pytest.approx(0.0, abs=1e-12)
    xn = x.double().numpy()
    expected = 1 - (xn**2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert fve_uncentered(x, zero) == pytest.approx(expected, rel=1e-10)
    assert expected < -1  # mean offset 3 ≫ std 1: the uncentred form is strongly negative
    assert mse(x, zero) == pytest.approx(float((xn**2).mean()), rel=1e-10)


def test_constant_offset_separates_the_two_fves():
    x = _x()
    c = torch.linspace(-1, 1, x.shape[1])
    x_hat = x + c
    assert fve(x, x_hat) == pytest.approx(1.0, abs=1e-12)
    sst = float(((x - x.mean(0)) ** 2).double().sum())
    expected = 1 - x.shape[0] * float((c**2).double().sum()) / sst
    assert fve_uncentered(x, x_hat) == pytest.approx(expected, rel=1e-6)


def test_shrunk_reconstruction():
    x = _x(offset=0.0)
    assert relative_reconstruction_bias(x, 0.5 * x) == pytest.approx(0.5, rel=1e-10)
    assert fve(x, 0.5 * x) == pytest.approx(0.75, rel=1e-10)


def test_l0_hand_built():
    acts = torch.tensor([[0.0, 1.0, 2.0, 0.0],
                         [0.0, 0.0, 0.0, 0.0],
                         [3.0, -1.0, 0.5, 0.0]])
    assert l0(acts) == pytest.approx(4 / 3)


# ------------------------------------------------------------------ streaming accumulator

def _batches(seed=0, sizes=(17, 40, 5, 64), d=8, d_sae=12):
    g = torch.Generator().manual_seed(seed)
    out = []
    doc = 0
    for i, n in enumerate(sizes):
        x = torch.randn(n, d, generator=g) * 2 + 5
        x_hat = 0.8 * x + 0.3 * torch.randn(n, d, generator=g) + 0.1 * i
        acts = torch.relu(torch.randn(n, d_sae, generator=g) - 0.5)
        docs = doc + torch.arange(n) // 7  # documents of 7 tokens, one spans two batches
        doc = int(docs[-1])
        out.append((x, x_hat, acts, docs))
    return out


def test_accumulator_equals_one_shot():
    batches = _batches()
    acc = ReconstructionAccumulator()
    for x, x_hat, acts, docs in batches:
        acc.update(x, x_hat, acts, doc_index=docs)
    r = acc.result()
    X = torch.cat([b[0] for b in batches])
    XH = torch.cat([b[1] for b in batches])
    A = torch.cat([b[2] for b in batches])
    assert r.n_tokens == X.shape[0]
    assert r.l0 == pytest.approx(l0(A), rel=1e-12)
    assert r.fve == pytest.approx(fve(X, XH), rel=1e-10)
    assert r.fve_uncentered == pytest.approx(fve_uncentered(X, XH), rel=1e-10)
    assert r.mse == pytest.approx(mse(X, XH), rel=1e-10)
    assert r.rel_bias == pytest.approx(relative_reconstruction_bias(X, XH), rel=1e-10)
    batch_mean = np.mean([fve(b[0], b[1]) for b in batches])
    assert r.fve_batch_mean == pytest.approx(batch_mean, rel=1e-12)
    assert r.fve_batch_mean != pytest.approx(r.fve, rel=1e-3)  # per-batch offsets differ
    # the per-document raw-sum path must agree with the streaming centred path
    m = metrics_from_doc_sums(acc.per_doc())
    assert m.n_tokens == r.n_tokens
    for name in ("l0", "fve", "fve_uncentered", "mse", "rel_bias"):
        assert getattr(m, name) == pytest.approx(getattr(r, name), rel=1e-9), name


def test_per_doc_sums_match_direct():
    batches = _batches()
    acc = ReconstructionAccumulator()
    for x, x_hat, acts, docs in batches:
        acc.update(x, x_hat, acts, doc_index=docs)
    s = acc.per_doc()
    X = torch.cat([b[0] for b in batches]).double()
    XH = torch.cat([b[1] for b in batches]).double()
    D = torch.cat([b[3] for b in batches])
    assert s.doc_ids.tolist() == sorted(set(D.tolist()))
    for row, doc in enumerate(s.doc_ids.tolist()):
        sel = D == doc
        assert s.n_tokens[row] == sel.sum()
        torch.testing.assert_close(s.x_sum[row], X[sel].sum(0))
        torch.testing.assert_close(s.sq_err[row], ((X[sel] - XH[sel]) ** 2).sum())


def test_typical_sums_are_the_sums_of_the_typical_tokens_alone():
    """per_doc(typical=True) equals an accumulator fed only the typical tokens, with a
    zero row for a document that has none (rows stay aligned with per_doc())."""
    batches = _batches()
    acc, alone = ReconstructionAccumulator(), ReconstructionAccumulator()
    for x, x_hat, acts, docs in batches:
        keep = x.norm(dim=-1) <= x.norm(dim=-1).median()
        keep[docs == docs[0]] = False  # one document without a typical token
        acc.update(x, x_hat, acts, doc_index=docs, typical=keep)
        alone.update(x[keep], x_hat[keep], acts[keep], doc_index=docs[keep])
    every, typical, ref = acc.per_doc(), acc.per_doc(typical=True), alone.per_doc()
    assert typical.doc_ids.tolist() == every.doc_ids.tolist()
    rows = [every.doc_ids.tolist().index(d) for d in ref.doc_ids.tolist()]
    missing = sorted(set(range(len(every.doc_ids))) - set(rows))
    assert missing and all(typical.n_tokens[m] == 0 for m in missing)
    for name in ("n_tokens", "sq_err", "x_sum", "err_sum", "x_sq", "l0_sum"):
        torch.testing.assert_close(getattr(typical, name)[rows], getattr(ref, name))
    assert metrics_from_doc_sums(typical).fve == pytest.approx(
        metrics_from_doc_sums(ref).fve, rel=1e-12)
    assert metrics_from_doc_sums(typical).fve != pytest.approx(
        metrics_from_doc_sums(every).fve, rel=1e-6)
    # without a mask every token is typical, and no second set of sums is kept
    plain = ReconstructionAccumulator()
    for x, x_hat, acts, docs in batches:
        plain.update(x, x_hat, acts, doc_index=docs)
    torch.testing.assert_close(plain.per_doc(typical=True).sq_err, plain.per_doc().sq_err)
    assert not any(k.startswith(TYPICAL) for k in plain._doc)
    x, x_hat, acts, docs = batches[0]
    with pytest.raises(ValueError, match="typical must be given for every batch or for none"):
        plain.update(x, x_hat, acts, doc_index=docs, typical=x.norm(dim=-1) > 0)


def test_doc_index_all_or_nothing():
    (x, x_hat, acts, docs), *_ = _batches()
    acc = ReconstructionAccumulator()
    acc.update(x, x_hat, acts, doc_index=docs)
    with pytest.raises(ValueError):
        acc.update(x, x_hat, acts)


def test_csr_latents_count_like_dense_ones():
    """The accumulator takes the CSR latents of JumpReLUSAE.latents: the same firing counts,
    L0 and results as the dense matrix (whose positive entries are the stored ones)."""
    dense, sparse = ReconstructionAccumulator(), ReconstructionAccumulator()
    for x, x_hat, acts, docs in _batches():
        dense.update(x, x_hat, acts, docs)
        sparse.update(x, x_hat, acts.to_sparse_csr(), docs)
    assert torch.equal(dense.firing_counts, sparse.firing_counts)
    assert dense.result() == sparse.result() and 0 < dense.result().l0 < 12
    assert torch.equal(dense.per_doc().l0_sum, sparse.per_doc().l0_sum)


def test_dead_and_dense_fractions():
    n, d_sae = 100, 5
    acts = torch.zeros(n, d_sae)
    acts[:5, 1] = 1.0  # 5%: alive, not dense
    acts[:10, 2] = 1.0  # exactly 10%: not dense (dense is > 10%)
    acts[:11, 3] = 1.0  # 11%: dense
    acts[:, 4] = 2.0  # always: dense; latent 0 never fires: dead
    x = _x(n, 4)
    acc = ReconstructionAccumulator()
    acc.update(x[:60], x[:60], acts[:60])
    acc.update(x[60:], x[60:], acts[60:])
    r = acc.result()
    assert r.dead_frac == pytest.approx(0.2)
    assert r.dense_frac == pytest.approx(0.4)
    assert acc.firing_counts.tolist() == [0, 5, 10, 11, 100]
    h = acc.density_histogram(bins=20)
    assert h.n_dead == 1 and int(h.counts.sum()) == 4
    assert h.edges[0] == -2.0 and h.edges[-1] == 0.0
    # log10 rate 0 (always on) lands in the last bin, 5% (−1.30) in the bin holding it
    assert h.counts[-1] == 1
    k = int(torch.searchsorted(h.edges, torch.tensor(math.log10(0.05), dtype=torch.float64)))
    assert h.counts[k - 1] == 1


def test_density_histogram_default_range():
    h = density_histogram(torch.tensor([0, 1, 1000]), n_tokens=1000, bins=3)
    assert h.edges.tolist() == [-3.0, -2.0, -1.0, 0.0]
    assert h.counts.tolist() == [1, 0, 1] and h.n_dead == 1


# ------------------------------------------------------------------ bootstrap

def _doc_stats(n_docs, seed=0, tokens_per_doc=6):
    g = torch.Generator().manual_seed(seed)
    acc = ReconstructionAccumulator()
    n = n_docs * tokens_per_doc
    x = torch.randn(n, 6, generator=g)
    # per-document quality varies, so the bootstrap has something to resample
    noise_scale = torch.rand(n_docs, generator=g).repeat_interleave(tokens_per_doc)[:, None]
    x_hat = x + noise_scale * torch.randn(n, 6, generator=g)
    docs = torch.arange(n) // tokens_per_doc
    acc.update(x, x_hat, torch.ones(n, 3), doc_index=docs)
    return acc.per_doc()


# ------------------------------------------------------------------ CE combiners

def test_ce_combiners_known_values():
    assert loss_recovered(2.0, 2.0, 12.0) == 1.0
    assert loss_recovered(2.0, 12.0, 12.0) == 0.0
    assert loss_recovered(2.0, 3.0, 12.0) == pytest.approx(0.9)
    assert delta_ce(2.0, 2.25) == 0.25
    assert kl_score(0.1, 1.0) == pytest.approx(0.9)
    doc = DocCE(*(torch.tensor(v, dtype=torch.float64) for v in
                  ([2.0, 2.0], [4.0, 4.0], [6.0, 6.0], [24.0, 24.0], [1.0, 1.0], [10.0, 10.0])))
    s = summarize_ce(doc)
    assert (s.ce_clean, s.ce_spliced, s.ce_zero) == (2.0, 3.0, 12.0)
    assert s.loss_recovered == pytest.approx(0.9) and s.kl_score == pytest.approx(0.9)
    assert concat_doc_stats([doc, doc]).n_tokens.tolist() == [2.0] * 4


# ------------------------------------------------------------------ spliced CE, tiny Gemma-3

VOCAB, BOS, EOS, PAD = 97, 2, 1, 0
LAYER = 1


@pytest.fixture(scope="module")
def tiny_gemma():
    """(TL, LanguageModel) pair with identical weights: a 3-block Gemma-3 with local and
    global layers, random weights from a config (no download)."""
    from types import SimpleNamespace

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from sae_med.lm.model import LanguageModel

    torch.manual_seed(0)
    hcfg = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=8, layer_types=["sliding_attention", "sliding_attention",
                                       "full_attention"],
        max_position_embeddings=64, initializer_range=0.2,  # peaked enough that ablation hurts
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)
    hf = Gemma3ForCausalLM(hcfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so the +1 conventions are exercised
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    cfg = HookedTransformerConfig(
        d_model=32, d_head=16, n_heads=2, d_mlp=64, n_layers=3, n_ctx=64, eps=1e-6,
        d_vocab=VOCAB, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
        rotary_base=1_000_000, rotary_base_local=10_000, positional_embedding_type="rotary",
        use_attn_scale=True, n_key_value_heads=1, gated_mlp=True, final_rms=True,
        use_normalization_before_and_after=True, use_qk_norm=True, window_size=8,
        use_local_attn=True, attn_types=["local", "local", "global"],
        original_architecture="Gemma3ForCausalLM", dtype=torch.float32, device="cpu")
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(
        convert_gemma_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
        center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False)
    tl.eval()
    # only the special ids of a tokenizer are read by the scoring path
    ids = SimpleNamespace(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return tl, LanguageModel(hf, ids, "tiny-gemma3", "random")


def _tiny_batch():
    from sae_med.lm.model import TokenBatch

    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(3, VOCAB, (3, 20), generator=g)
    tokens[:, 0] = BOS
    attn = torch.ones_like(tokens)
    tokens[1, 14:], attn[1, 14:] = PAD, 0  # right padding
    tokens[2, 9] = EOS
    keep = attn.bool() & ~torch.isin(tokens, torch.tensor([BOS, EOS, PAD]))
    return TokenBatch(tokens, attn, keep)


def _wobble(x):
    return 0.7 * x + 0.2 * torch.tanh(x)


def test_tiny_pair_agrees(tiny_gemma):
    tl, lm = tiny_gemma
    tokens = _tiny_batch().tokens
    with torch.no_grad():
        torch.testing.assert_close(tl(tokens), lm.hf_model(tokens).logits, atol=1e-5,
                                   rtol=1e-4)


def test_identity_sae_recovers_everything(tiny_gemma):
    _, lm = tiny_gemma
    s = spliced_losses(lm, _tiny_batch(), LAYER, {"id": lambda x: x})["id"].summary()
    assert s.loss_recovered == pytest.approx(1.0, abs=1e-5)
    assert abs(s.delta_ce) < 1e-5
    assert s.kl_spliced < 1e-6
    assert s.kl_zero > 0.05


def test_zero_sae_recovers_nothing(tiny_gemma):
    _, lm = tiny_gemma
    out = spliced_losses(lm, _tiny_batch(), LAYER, {"zero": torch.zeros_like})["zero"]
    s = out.summary()
    assert s.loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert s.kl_score == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(out.ce_spliced, out.ce_zero)


def test_ce_clean_matches_model_loss_and_mask(tiny_gemma):
    tl, lm = tiny_gemma
    batch = _tiny_batch()
    tokens, attn, mask = batch
    seen = []

    def recording(x):
        seen.append(x.shape[0])
        return _wobble(x)

    out = spliced_losses(lm, batch, LAYER, {"w": recording}, chunk_tokens=5)["w"]
    assert seen == [int(mask.sum())]  # spliced only at kept positions, BOS/EOS/pad untouched
    expected_mask = mask[:, :-1] & attn[:, 1:].bool()
    assert torch.equal(out.mask, expected_mask)
    assert not out.mask[:, 0].any() and not out.mask[1, 13:].any() and not out.mask[2, 9]
    with torch.no_grad():
        ref = tl(tokens, return_type="loss", loss_per_token=True)
    torch.testing.assert_close(out.ce_clean[out.mask], ref[out.mask], atol=1e-5, rtol=1e-5)
    assert (out.ce_clean[~out.mask] == 0).all()
    # chunking the unembedding does not change anything
    big = spliced_losses(lm, batch, LAYER, {"w": _wobble}, chunk_tokens=10_000)["w"]
    for name in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero"):
        torch.testing.assert_close(getattr(out, name), getattr(big, name))
    assert (out.kl_spliced[out.mask] >= -1e-6).all()
    docs = out.doc_sums()
    assert docs.n_tokens.tolist() == expected_mask.sum(1).double().tolist()


def test_shared_pass_matches_naive_tl_and_hf_twins(tiny_gemma):
    """The package's path (shared clean/zero passes, chunked unembedding, forward stopped
    nowhere) against full-logit single-pass twins through TransformerLens and HF hooks."""
    from naive_lm import ce_losses_hf, ce_losses_tl

    tl, lm = tiny_gemma
    batch = _tiny_batch()
    ours = spliced_losses(lm, batch, LAYER, {"w": _wobble, "z": torch.zeros_like},
                             chunk_tokens=7)
    a = ce_losses_tl(tl, batch.tokens, batch.attention_mask, LAYER, _wobble, batch.keep)
    b = ce_losses_hf(lm.hf_model, batch.tokens, batch.attention_mask, LAYER, _wobble,
                     batch.keep)
    for ref in (a, b):
        assert torch.equal(ours["w"].mask, ref.mask)
        for name in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero"):
            torch.testing.assert_close(getattr(ours["w"], name), getattr(ref, name),
                                       atol=2e-5, rtol=1e-4)
    assert a.summary().kl_spliced > 1e-3  # the splice really changed something
    torch.testing.assert_close(ours["z"].ce_spliced, ours["z"].ce_zero)


@pytest.mark.slow
def test_tl_and_hf_splicing_agree_real_model(model):
    from naive_lm import ce_losses_tl

    batch = model.tokenize(["The patient presented with fever and a sore throat.",
                            "Mononucleosis is caused by Epstein-Barr virus."], ctx_len=32)

    def sae_fn(x):
        return 0.9 * x

    a = ce_losses_tl(model.transformer_lens(), batch.tokens, batch.attention_mask, 13, sae_fn,
                     batch.keep)
    b = spliced_losses(model, batch, 13, {"s": sae_fn})["s"]
    assert torch.equal(a.mask, b.mask) and not a.mask[:, 0].any()
    sa, sb = a.summary(), b.summary()
    assert sa.ce_clean == pytest.approx(sb.ce_clean, abs=1e-3)
    assert sa.ce_spliced == pytest.approx(sb.ce_spliced, abs=1e-3)
    assert sa.ce_zero == pytest.approx(sb.ce_zero, abs=1e-3)
    assert sa.kl_spliced == pytest.approx(sb.kl_spliced, abs=1e-3)
