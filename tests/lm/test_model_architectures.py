"""Any Hugging Face causal LM: tiny random tiny_lm_dirs of several architectures, built from
configs and saved to a folder (no download), loaded by path and run through the smoke
pipeline (cache → train → evaluate) with the real corpora and the real Gemma tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sae_med.config import load_config
from sae_med.experiment import run_experiment
from sae_med.lm.load import load_model
from sae_med.lm.model import decoder_layers
from sae_med.lm.weights import recorded_weights, weights_record
from sae_med.measure.spliced import spliced_losses

LAYER = 1


@pytest.mark.parametrize("arch", ["gemma2", "llama", "gpt2", "gpt_neox"])
def test_resid_equals_hf_hidden_states(tiny_lm_dirs, arch):
    lm = load_model(str(tiny_lm_dirs[arch]), device="cpu")
    assert lm.n_layers == 3 and lm.d_model == 32
    batch = lm.tokenize(["Fever and a rash.", "The cough lasted for weeks"], ctx_len=16)
    with torch.no_grad():
        out = lm.hf_model(input_ids=batch.tokens, attention_mask=batch.attention_mask,
                          output_hidden_states=True)
    keep = batch.attention_mask.bool()
    ours = lm.resid(batch.tokens, batch.attention_mask, LAYER)
    torch.testing.assert_close(ours[keep], out.hidden_states[LAYER + 1][keep])
    # an identity edit reproduces the model's own logits (soft-cap included)
    final = lm.final_states(batch.tokens, batch.attention_mask, LAYER, lambda x: x)
    torch.testing.assert_close(lm.unembed(final)[keep], out.logits[keep], rtol=1e-4,
                               atol=1e-4)
    # an edit rerun from the clean forward's residual (blocks 0..LAYER skipped) equals the
    # full edited forward, and leaves the model as it was
    clean = lm.clean_run(batch.tokens, batch.attention_mask, LAYER)
    torch.testing.assert_close(clean.final, final)
    for edit in (lambda x: 0.5 * x, torch.zeros_like):
        torch.testing.assert_close(
            lm.final_states_from(clean, batch.tokens, batch.attention_mask, LAYER, edit),
            lm.final_states(batch.tokens, batch.attention_mask, LAYER, edit))
    blocks = decoder_layers(lm.hf_model)
    assert all("forward" not in vars(block) for block in blocks)
    wrapped = blocks[0].forward  # an instance-level forward, as accelerate's hooks set
    blocks[0].forward = wrapped
    lm.final_states_from(clean, batch.tokens, batch.attention_mask, LAYER, torch.zeros_like)
    assert vars(blocks[0])["forward"] is wrapped
    del blocks[0].forward
    torch.testing.assert_close(lm.resid(batch.tokens, batch.attention_mask, LAYER)[keep],
                               out.hidden_states[LAYER + 1][keep])


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
def test_bfloat16_forwards_hand_on_fp32_and_are_keyed_apart(tiny_lm_dirs, arch):
    """``model.dtype: bfloat16``: the forwards run in bf16, residuals and W_U come back in
    fp32 close to the fp32 model's, the identity splice still costs exactly 0 nats, and
    the dtype is part of the model's identity (so caches and results are keyed apart)."""
    fp32 = load_model(str(tiny_lm_dirs[arch]), device="cpu")
    bf16 = load_model(str(tiny_lm_dirs[arch]), device="cpu", dtype="bfloat16")
    assert bf16.weights_hash == fp32.weights_hash + "/bfloat16"
    assert next(bf16.hf_model.parameters()).dtype == torch.bfloat16
    batch = bf16.tokenize(["Fever and a rash.", "The cough lasted for weeks"], ctx_len=16)
    keep = batch.attention_mask.bool()
    x16, x32 = (m.resid(batch.tokens, batch.attention_mask, LAYER)[keep] for m in (bf16, fp32))
    assert x16.dtype == bf16.W_U.dtype == torch.float32
    assert float((x16 - x32).norm() / x32.norm()) < 0.05
    losses = spliced_losses(bf16, batch, LAYER, {"id": lambda x: x.float(), "half": lambda x:
                                                0.5 * x.float()})
    ident, half = losses["id"].summary(), losses["half"].summary()
    assert ident.delta_ce == ident.kl_spliced == 0.0 and half.kl_spliced > 0
    ref = spliced_losses(fp32, batch, LAYER, {"half": lambda x: 0.5 * x})["half"].summary()
    assert abs(half.ce_clean - ref.ce_clean) < 0.05
    assert abs(half.kl_spliced - ref.kl_spliced) < 0.2 * ref.kl_spliced


def test_scoring_a_few_rows_at_a_time_matches_whole_chunks(tiny_lm_dirs, monkeypatch):
    """``SCORE_ROWS`` only changes how much of a chunk's log-probabilities are in memory at
    once: per-token CE is identical to scoring the whole chunk and KL the same to rounding
    (its sum over the vocabulary may be split differently), on a soft-capped bf16 model
    (Gemma-2) with a row count that divides neither the chunk nor the tokens."""
    import sae_med.measure.spliced as spliced

    model = load_model(str(tiny_lm_dirs["gemma2"]), device="cpu", dtype="bfloat16")
    assert model.softcap
    batch = model.tokenize(["Fever and a rash.", "The cough lasted for weeks", "Chest pain"],
                           ctx_len=16)
    fns = {"half": lambda x: 0.5 * x, "noisy": lambda x: x + 0.3 * torch.randn(
        x.shape, generator=torch.Generator().manual_seed(0))}
    out = {}
    for rows in (3, 10_000):
        monkeypatch.setattr(spliced, "SCORE_ROWS", rows)
        out[rows] = spliced_losses(model, batch, LAYER, fns, chunk_tokens=7)
    for k in fns:
        assert out[3][k].kl_spliced.abs().sum() > 0
        for field in ("ce_clean", "ce_spliced", "ce_zero"):
            assert torch.equal(getattr(out[3][k], field), getattr(out[10_000][k], field))
        for field in ("kl_spliced", "kl_zero"):  # a sum over the vocabulary: to rounding
            torch.testing.assert_close(getattr(out[3][k], field),
                                       getattr(out[10_000][k], field), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("arch", ["gemma2", "llama", "gpt2"])
def test_smoke_pipeline_runs_on_any_architecture(tiny_lm_dirs, arch, tmp_path):
    cfg = load_config("configs/smoke.yaml", [
        f"model.name={tiny_lm_dirs[arch]}", f"model.hook_layer={LAYER}",
        f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
        "replications={}", "learning_curve={}", "train_corpora=[medical]",
        "eval_corpora=[medical]",
        "cache.n_tokens=1024", "cache.shard_tokens=512", "sae.width=64", "sae.l0_targets=[4]",
        "train.n_tokens=4096", "train.batch_size=256", "eval.n_tokens=512",
        "eval.ce_docs=4", "eval.bootstrap=10"])
    doc = json.loads(run_experiment(cfg, progress=False).read_text())
    rows = doc["rows"]
    assert [r["sae_id"] for r in rows] == ["medical/seed_0/l0_4"]
    # the SAE records, from training time, the exact weights its activations came from
    meta = json.loads((Path(rows[0]["sae_dir"]) / "cfg.json").read_text())["metadata"]
    assert meta["weights"] == doc["weights"] and meta["weights"]["loaded_as"]
    assert recorded_weights(rows[0]["sae_dir"]).to_dict() == doc["weights"]
    m = rows[0]["metrics"]
    assert rows[0]["d_model"] == 32 and rows[0]["ce_tokens"] > 0
    for name in ("fve", "l0", "ce_clean", "ce_spliced", "ce_zero", "kl_spliced"):
        assert m[name]["value"] is not None and abs(m[name]["value"]) < 1e3, name
    assert m["ce_clean"]["value"] > 0


def test_smoke_config_runs_on_the_second_family(tmp_path):
    """configs/smoke.yaml's replication on SmolLM2-135M-Instruct (block 22): cache →
    train → evaluate for every training corpus (the default's medical, broad and mixed_10),
    as the Gemma smoke run does."""
    cfg = load_config("configs/smoke.yaml", [f"output_dir={tmp_path}"])
    rep = cfg.replication_configs()["smollm2_smoke"]
    assert rep.model.hook_layer == 22 and rep.run_path == tmp_path / "smollm2_smoke"
    doc = json.loads(run_experiment(rep, progress=False).read_text())
    rows = doc["rows"]
    assert {r["train_corpus"] for r in rows} == set(cfg.train_corpora) == \
        {"medical", "broad", "mixed_10"}
    assert {r["eval_corpus"] for r in rows} == set(cfg.eval_corpora) == {"medical", "broad"}
    for r in rows:
        assert r["d_model"] == 576
        assert 0 < r["metrics"]["l0"]["value"] < r["d_sae"]
        assert r["metrics"]["ce_spliced"]["value"] > r["metrics"]["ce_clean"]["value"]


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
def test_random_init_redraws_every_weight_and_is_keyed_apart(tiny_lm_dirs, arch):
    """``model.random_init_seed`` (the random-weights control): the same architecture,
    tokenizer and forward with every weight drawn afresh by the config's initialiser, the
    same weights for the same seed, others for another, and an identity of its own."""
    path = str(tiny_lm_dirs[arch])
    # seed 0 would redraw the tiny checkpoint itself: it was built from its config at seed 0
    trained = load_model(path, device="cpu")
    rand = load_model(path, device="cpu", random_init_seed=5)
    again = load_model(path, device="cpu", random_init_seed=5)
    other = load_model(path, device="cpu", random_init_seed=6)
    assert rand.weights_hash == trained.weights_hash + "/random-init-5"
    assert other.weights_hash != rand.weights_hash
    # its record names the redraw, so an SAE trained on it warns beside the trained model
    record = weights_record(path, rand.weights_hash)
    assert record.random_init_seed == 5 and "redrawn from seed 5" in record.describe()
    assert record.identity != weights_record(path, trained.weights_hash).identity
    assert weights_record(path, rand.weights_hash + "/bfloat16").identity == record.identity
    t, r, a, o = (dict(m.hf_model.named_parameters()) for m in (trained, rand, again, other))
    assert t.keys() == r.keys()
    for name, p in t.items():
        torch.testing.assert_close(r[name], a[name])
        if p.std() > 0:  # drawn weights, not the norms' constant init
            assert not torch.equal(r[name], p), name
            assert not torch.equal(r[name], o[name]), name
    std = trained.hf_model.config.initializer_range
    emb = r[next(n for n in r if "embed" in n)]
    assert abs(float(emb.std()) - std) < 0.2 * std
    batch = rand.tokenize(["Fever and a rash."], ctx_len=16)
    x = rand.resid(batch.tokens, batch.attention_mask, LAYER)
    assert torch.isfinite(x).all()
    assert not torch.allclose(x, trained.resid(batch.tokens, batch.attention_mask, LAYER))


def test_a_folders_tokenizer_is_read_once_until_its_files_change(tiny_lm_dirs, tmp_path):
    """load_tokenizer parses a folder's tokenizer once a process; a copy elsewhere is its own
    entry, and rewriting a tokenizer file in place makes the next call read it again."""
    import shutil

    from sae_med.lm.files import load_tokenizer

    folder = shutil.copytree(tiny_lm_dirs["llama"], tmp_path / "llama")
    first = load_tokenizer(folder)
    assert load_tokenizer(str(folder)) is first and load_tokenizer(folder / ".") is first
    assert load_tokenizer(tiny_lm_dirs["llama"]) is not first
    cfg = folder / "tokenizer_config.json"
    doc = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**doc, "model_max_length": 77}))
    again = load_tokenizer(folder)
    assert again is not first and again.model_max_length == 77
    assert again("a b").input_ids == first("a b").input_ids
