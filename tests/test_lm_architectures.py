"""Any Hugging Face causal LM: tiny random checkpoints of several architectures, built from
configs and saved to a folder (no download), loaded by path and run through the smoke
pipeline (cache → train → evaluate) with the real corpora and the real Gemma tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from sae_med.config import load_config
from sae_med.experiment import run_experiment
from sae_med.models import embedded_model_dir, load_model

PAD, EOS, BOS = 0, 1, 2
LAYER = 1


def _configs(vocab: int) -> dict:
    from transformers import Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig

    ids = {"pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": BOS}
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
             "num_attention_heads": 2, "max_position_embeddings": 128}
    return {
        # soft-capped logits, alternating local / global attention
        "gemma2": Gemma2Config(vocab_size=vocab, num_key_value_heads=1, head_dim=16,
                               final_logit_softcapping=30.0, sliding_window=8, **small,
                               **ids),
        "llama": LlamaConfig(vocab_size=vocab, num_key_value_heads=1, **small, **ids),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=2, n_positions=128,
                           **ids),
        "gpt_neox": GPTNeoXConfig(vocab_size=vocab, **small, **ids),
    }


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{architecture: folder} of tiny random checkpoints with the embedded tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()[0]))
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (PAD, EOS, BOS)
    root = tmp_path_factory.mktemp("tiny_lms")
    out = {}
    for arch, cfg in _configs(len(tok)).items():
        torch.manual_seed(0)
        folder = root / arch
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
        out[arch] = folder
    return out


@pytest.mark.parametrize("arch", ["gemma2", "llama", "gpt2", "gpt_neox"])
def test_resid_equals_hf_hidden_states(checkpoints, arch):
    lm = load_model(str(checkpoints[arch]), device="cpu")
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


@pytest.mark.parametrize("arch", ["gemma2", "llama", "gpt2"])
def test_smoke_pipeline_runs_on_any_architecture(checkpoints, arch, tmp_path):
    cfg = load_config("configs/smoke.yaml", [
        f"model.name={checkpoints[arch]}", f"model.hook_layer={LAYER}",
        f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
        "train_corpora=[medical]", "eval_corpora=[medical]", "cache.n_tokens=1024",
        "cache.shard_tokens=512", "sae.width=64", "sae.l0_targets=[4]",
        "train.n_tokens=4096", "train.batch_size=256", "eval.n_tokens=512",
        "eval.ce_docs=4", "eval.bootstrap=10"])
    rows = json.loads(run_experiment(cfg, progress=False).read_text())["rows"]
    assert [r["sae_id"] for r in rows] == ["medical/seed_0/l0_4"]
    m = rows[0]["metrics"]
    assert rows[0]["d_model"] == 32 and rows[0]["ce_tokens"] > 0
    for name in ("fve", "l0", "ce_clean", "ce_spliced", "ce_zero", "kl_spliced"):
        assert m[name]["value"] is not None and abs(m[name]["value"]) < 1e3, name
    assert m["ce_clean"]["value"] > 0


def test_smoke_config_runs_on_the_second_family(tmp_path):
    """configs/smollm2_smoke.yaml (SmolLM2-135M-Instruct, block 22): cache → train →
    evaluate for both training corpora, as the Gemma smoke run does."""
    cfg = load_config("configs/smollm2_smoke.yaml", [f"output_dir={tmp_path}"])
    assert cfg.model.hook_layer == 22
    doc = json.loads(run_experiment(cfg, progress=False).read_text())
    rows = doc["rows"]
    assert {r["train_corpus"] for r in rows} == {"medical", "broad"}
    assert {r["eval_corpus"] for r in rows} == {"medical", "broad"}
    for r in rows:
        assert r["d_model"] == 576
        assert 0 < r["metrics"]["l0"]["value"] < r["d_sae"]
        assert r["metrics"]["ce_spliced"]["value"] > r["metrics"]["ce_clean"]["value"]
