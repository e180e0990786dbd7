"""Tiny random Hugging Face checkpoints of several architectures, built from configs and
saved with the embedded Gemma tokenizer (no download), for the tests only."""

from __future__ import annotations

from pathlib import Path

import torch

PAD, EOS, BOS = 0, 1, 2
ARCHITECTURES = ("gemma2", "llama", "gpt2", "gpt_neox")


def tiny_config(arch: str, vocab: int, layers: int = 3):
    from transformers import Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig

    ids = {"pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": BOS}
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers,
             "num_attention_heads": 2, "max_position_embeddings": 128}
    if arch == "gemma2":  # soft-capped logits, alternating local / global attention
        return Gemma2Config(vocab_size=vocab, num_key_value_heads=1, head_dim=16,
                            final_logit_softcapping=30.0, sliding_window=8, **small, **ids)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, num_key_value_heads=1, **small, **ids)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=2,
                          n_positions=128, **ids)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, **small, **ids)
    raise KeyError(arch)


def save_tiny_lm(folder: Path, arch: str, layers: int = 3) -> Path:
    """A random ``arch`` model (d_model 32, ``layers`` blocks, seed 0) and the embedded
    tokenizer, saved to ``folder`` as ``save_pretrained`` does."""
    from transformers import AutoModelForCausalLM

    from sae_med.lm.files import embedded_model_dir, load_tokenizer

    tok = load_tokenizer(embedded_model_dir()[0])
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (PAD, EOS, BOS)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(arch, len(tok), layers)).save_pretrained(
        folder)
    tok.save_pretrained(folder)
    return folder
