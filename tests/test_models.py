"""Model loading: the embedded Gemma-3-270M for real, and the offline hub error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sae_med.models import ModelUnavailableError, load_model, resid_post


def test_embedded_model_matches_its_hf_twin(model):
    assert model.n_layers == 18 and model.d_model == 640
    assert model.weights_hash.startswith("embedded:gemma-3-270m@")
    tokens = model.tokenizer("Ageusia is the loss of taste.", return_tensors="pt").input_ids
    with torch.no_grad():
        tl_loss = model.tl(tokens, return_type="loss")
        hf_loss = model.hf(tokens, labels=tokens).loss
    torch.testing.assert_close(tl_loss, hf_loss, rtol=1e-4, atol=1e-4)
    # a clinical sentence is far more predictable than gibberish (the model is real)
    gib = model.tokenizer("zq vlorp at xxk pleem quonx ravv", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model.tl(gib, return_type="loss") > tl_loss + 1.0


def test_resid_post_stops_at_the_hook_and_matches_tl(model):
    tokens = model.tokenizer(["Fever and rash.", "A cough"], return_tensors="pt",
                             padding=True, padding_side="right")
    mask = tokens.attention_mask
    calls = []
    handle = model.hf.model.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        hf_acts = resid_post(model.hf, tokens.input_ids, mask, 5)
    finally:
        handle.remove()
    assert calls == []  # the last block never ran
    _, cache = model.tl.run_with_cache(tokens.input_ids, attention_mask=mask,
                                       names_filter="blocks.5.hook_resid_post")
    ref = cache["blocks.5.hook_resid_post"]
    keep = mask.bool()
    torch.testing.assert_close(hf_acts[keep], ref[keep], rtol=1e-4,
                               atol=float(ref.abs().max()) * 1e-5)


def test_unknown_embedded_name_lists_the_known_ones():
    with pytest.raises(ModelUnavailableError, match="embedded:gemma-3-270m"):
        load_model("embedded:gpt-7")


def test_offline_hub_id_gives_one_clear_error():
    code = ("from sae_med.models import load_model\n"
            "load_model('google/gemma-2-2b', device='cpu')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/tmp/sae-med-empty-hf-home"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()
    assert any("ModelUnavailableError" in line and "google/gemma-2-2b" in line for line in last)
    assert "model.name=embedded:gemma-3-270m" in proc.stderr
