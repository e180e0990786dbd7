"""Automated interpretation with the real local model (SmolLM2-135M-Instruct), its HTTP twin
behind a loopback OpenAI-compatible server, and known answers for the scorer arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sae_med.autointerp import (
    DETECT_REMINDER,
    ask,
    auroc,
    compare_scores,
    detection_messages,
    detection_metrics,
    held_out_positives,
    interpret_sae,
    parse_explanation,
    parse_yes_no,
    pick_latents,
    silent_windows,
)
from sae_med.config import AutointerpConfig, ConfigError, config_from_dict, load_config
from sae_med.features import encode_cache, top_windows
from sae_med.llm import CachedChat, LocalChat, OpenAIChat, make_chat, p_yes_from_logprobs
from sae_med.llm_server import serve
from sae_med.metrics import bootstrap_mean
from sae_med.sae import JumpReLUSAE

SMALL = AutointerpConfig(n_latents=2, n_windows=3, n_score=2, max_new_tokens=24,
                         max_retries=1, fuzzing=True)
FEW_SHOT = "Q: Is the sun hot?\nA: Yes\nQ: Is ice hot?\nA: No\nQ: {}\nA:"
"""SmolLM2-135M says "No" to nearly every yes/no question and orders many obvious pairs
wrongly ("Is the sky blue?" gets a lower p_yes than "Is fire cold?"); in this few-shot
frame it ranks "Is a cat an animal?" clearly above "Is a rock an animal?" (measured p_yes
0.44 vs 0.30)."""


@pytest.fixture(scope="module")
def local():
    """The real SmolLM2 (fp32 copy cached under the user cache dir on first use), run on
    one thread (tiny matmuls); the thread count is restored for later test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LocalChat(max_new_tokens=24)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(small_medical_cache):
    return small_medical_cache


@pytest.fixture(scope="module")
def sae_acts(cache):
    s = JumpReLUSAE(cache.d_model, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # thresholds at the 90th percentile: every latent fires on 10%
        z = cache.activations() @ s.W_enc + s.b_enc
        s.log_threshold.copy_(torch.quantile(z, 0.9, dim=0).clamp_min(1e-3).log())
    return s, encode_cache(s, cache, progress=False)


def test_local_backend_explains_and_scores_real_latents(local, model, cache, sae_acts,
                                                        tmp_path):
    sae, acts = sae_acts
    chat = CachedChat(local, tmp_path / "llm.jsonl")
    W_U = model.W_U
    calls0 = local.n_calls
    frame = interpret_sae(sae, acts, cache, model.tokenizer, W_U, chat, SMALL, progress=False)
    assert len(frame) == 2 and frame["latent"].is_unique
    assert local.n_calls - calls0 == frame["n_calls"].sum() == chat.misses
    for row in frame.itertuples():
        assert row.n_positive == row.n_negative > 0
        # failures are counted and every malformed response is kept, never dropped
        assert row.n_failures * (SMALL.max_retries + 1) <= len(row.failed_responses)
        assert all(parse_yes_no(r) is None or parse_explanation(r) is None
                   for r in row.failed_responses)
        assert row.n_p_failures == 0  # the local model always has a yes/no distribution
        if row.explanation:
            for m in ("accuracy", "f1", "fuzz_accuracy", "fuzz_f1"):
                v = getattr(row, m)
                assert math.isnan(v) or 0 <= v <= 1, (m, v)
            # both sides are non-empty, so the AUROCs are defined
            assert 0 <= row.detection_auroc <= 1 and 0 <= row.fuzz_auroc <= 1
            # explainer + detection + fuzzing: at least one generation and one p_yes each
            assert row.n_calls >= 1 + 2 * (2 * row.n_positive + 2 * row.n_positive)
        else:
            assert math.isnan(row.detection_auroc) and math.isnan(row.fuzz_auroc)
    # a rerun from the JSONL gives the same table without touching the model
    again = CachedChat(local, tmp_path / "llm.jsonl")
    calls1 = local.n_calls
    frame2 = interpret_sae(sae, acts, cache, model.tokenizer, W_U, again, SMALL, progress=False)
    assert local.n_calls == calls1 and again.misses == 0 and again.hits == chat.misses
    assert frame2.equals(frame)


def test_held_out_windows_are_balanced_and_disjoint(cache, sae_acts):
    _, acts = sae_acts
    [latent] = pick_latents(acts, cache, 1, min_docs=5, seed=0)
    seen = {w.doc_index for w in top_windows(acts, cache, latent, k=3)}
    pos = held_out_positives(acts, cache, latent, 2, seen, seed=0)
    neg = silent_windows(acts, cache, latent, 2, seed=0)
    assert len(pos) == len(neg) == 2
    assert all(w.doc_index not in seen and w.activation > 0 for w in pos)
    assert all(max(w.values) == 0 for w in neg)


def test_http_backend_matches_local_through_loopback_server(local):
    server = serve(local, port=0)
    try:
        remote = OpenAIChat(model="embedded:smollm2-135m-instruct",
                            base_url=f"http://127.0.0.1:{server.server_port}/v1",
                            max_new_tokens=24, timeout_s=60, max_retries=0)
        msgs = detection_messages("words about fever", "The patient had a high fever.")
        assert remote.chat(msgs, 8) == local.chat(msgs, 8) != ""
        msgs = [{"role": "user", "content": "Name one organ of the human body."}]
        assert remote.chat(msgs) == local.chat(msgs)
        # p_yes over HTTP: the yes/no mass among the first token's top 20 logprobs; on the
        # scorer's prompt every yes/no token with noticeable mass is in the top 20
        msgs = detection_messages("words about fever", "The patient had a high fever.")
        p_local, p_remote = local.p_yes(msgs), remote.p_yes(msgs)
        assert 0 < p_remote < 1 and p_remote == pytest.approx(p_local, abs=1e-4)
        # and it is exactly the local distribution cut to its top 20 (what the API allows)
        lp = local.next_token_logprobs(msgs).topk(20)
        top = [(local.tokenizer.decode([i]), v)
               for v, i in zip(lp.values.tolist(), lp.indices.tolist(), strict=True)]
        assert p_remote == pytest.approx(p_yes_from_logprobs(top), abs=1e-6)
    finally:
        server.shutdown()


def test_http_p_yes_falls_back_to_the_answer_without_logprobs(local, tmp_path):
    # a server around a backend that is not a LocalChat rejects logprobs requests (400)
    server = serve(CachedChat(local, tmp_path / "llm.jsonl"), port=0)
    try:
        remote = OpenAIChat(model="m", base_url=f"http://127.0.0.1:{server.server_port}/v1",
                            timeout_s=60, max_retries=0)
        msgs = detection_messages("words about fever", "The patient had a high fever.")
        answer = parse_yes_no(local.chat(msgs, 1))
        assert answer is not None and remote.p_yes(msgs) == float(answer)
        assert not remote.logprobs_supported
    finally:
        server.shutdown()


def test_local_p_yes_ranks_a_true_statement_above_a_false_one(local):
    p_true, p_false = (local.p_yes([{"role": "user", "content": FEW_SHOT.format(q)}])
                       for q in ("Is a cat an animal?", "Is a rock an animal?"))
    assert 0 < p_false < p_true < 1


def test_cache_answers_repeated_p_yes_without_the_model(local, tmp_path):
    msgs = detection_messages("words about fever", "The patient had a high fever.")
    chat = CachedChat(local, tmp_path / "llm.jsonl")
    calls = local.n_calls
    p = chat.p_yes(msgs)
    assert local.n_calls == calls + 1 and (chat.hits, chat.misses) == (0, 1)
    assert chat.p_yes(msgs) == p and local.n_calls == calls + 1 and chat.hits == 1
    # a p_yes is keyed apart from a chat with the same messages, and survives a reload
    again = CachedChat(local, tmp_path / "llm.jsonl")
    assert again.p_yes(msgs) == p and local.n_calls == calls + 1 and again.hits == 1
    assert again.p_yes_key(msgs) != again.key(msgs, None)


def test_p_yes_from_logprobs_known_answers():
    # yes variants sum, no variants sum, anything else is ignored
    top = [(" Yes", math.log(0.3)), ("yes", math.log(0.1)), ("No", math.log(0.2)),
           (" NO", math.log(0.2)), ("The", math.log(0.15))]
    assert p_yes_from_logprobs(top) == pytest.approx(0.4 / 0.8)
    assert p_yes_from_logprobs([("No", -0.1)]) == 0.0
    assert p_yes_from_logprobs([("The", -0.1), ("I", -2.0)]) is None


def test_auroc_known_answers():
    assert auroc([0.9, 0.8], [0.1, 0.2, 0.3]) == 1.0
    assert auroc([0.1, 0.2], [0.8, 0.9]) == 0.0
    assert auroc([0.5, 0.5], [0.5, 0.5, 0.5]) == 0.5
    # one tie across the sides counts half: pairs (0.9 > all) + (0.5 vs 0.5, 0.1) = 2 + 1.5
    assert auroc([0.9, 0.5], [0.5, 0.1]) == pytest.approx(3.5 / 4)
    assert math.isnan(auroc([], [0.2])) and math.isnan(auroc([0.2], []))


def test_malformed_responses_are_retried_then_recorded(local, tmp_path):
    chat = CachedChat(local, tmp_path / "llm.jsonl")
    msgs = detection_messages("words about fever", "The patient had a high fever.")
    never = ask(chat, msgs, lambda text: None, max_retries=2, reminder=DETECT_REMINDER)
    assert never.value is None and never.attempts == 3 and len(never.failed) == 3
    assert chat.misses == 3  # each retry is a new prompt (the reminder turn), not a repeat
    first = ask(chat, msgs, lambda text: text or None, max_retries=2, reminder=DETECT_REMINDER)
    assert first.attempts == 1 and first.value == never.failed[0] and first.failed == []
    assert chat.hits == 1 and chat.misses == 3


def test_detection_metrics_known_answers():
    # 3 positives, 3 negatives: TP=2, FN=1 (a failure), TN=2, FP=1
    m = detection_metrics([True, True, True, False, False, False],
                          [True, True, None, False, False, True])
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m.n_failures == 1
    # a failure on a negative counts as a false positive
    m = detection_metrics([True, False], [True, None])
    assert (m.accuracy, m.f1, m.n_failures) == (0.5, pytest.approx(2 / 3), 1)
    assert math.isnan(detection_metrics([], []).accuracy)


def test_parsers():
    assert parse_yes_no(" Yes, it does.") is True and parse_yes_no("no.") is False
    assert parse_yes_no("1") is True and parse_yes_no("The answer is yes") is None
    assert parse_explanation("\nExplanation: \"words about fever\"\nmore") == "words about fever"
    assert parse_explanation("  \n...") is None


def test_compare_scores_bootstrap_interval():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.7, 0.9, 40)
    b = rng.uniform(0.4, 0.6, 40)
    import pandas as pd

    frames = {name: pd.DataFrame({"detection_auroc": np.r_[v, np.nan], "n_failures": 1,
                                  "n_p_failures": 2})
              for name, v in (("medical", a), ("broad", b))}
    table = compare_scores(frames, "detection_auroc", n_boot=500).set_index("SAE")
    assert table.loc["medical", "n_latents"] == 40
    assert table.loc["medical", "n_unscored"] == 1 and table.loc["medical", "n_failures"] == 41
    assert table.loc["medical − broad", "n_p_failures"] == 2 * 82
    for name, v in (("medical", a), ("broad", b)):
        row = table.loc[name]
        assert row["mean"] == pytest.approx(v.mean())
        assert row["ci_low"] < row["mean"] < row["ci_high"]
        assert row["ci_high"] - row["ci_low"] < 0.1
    diff = table.loc["medical − broad"]
    assert diff["mean"] == pytest.approx(a.mean() - b.mean())
    assert 0 < diff["ci_low"] < diff["mean"] < diff["ci_high"]
    mean, lo, hi = bootstrap_mean([0.5] * 10)
    assert mean == lo == hi == 0.5


def test_config_section_and_errors(tmp_path):
    cfg = load_config(None)
    assert cfg.autointerp.backend == "local" and cfg.autointerp.n_score > 0
    with pytest.raises(ConfigError, match=r"'autointerp\.backend'.*valid backends: local, "
                                          r"openai"):
        config_from_dict({"autointerp": {"backend": "vllm"}})
    with pytest.raises(ConfigError, match=r"'autointerp\.n_score'"):
        config_from_dict({"autointerp": {"n_score": 0}})
    with pytest.raises(ConfigError, match=r"'autointerp\.max_retries'"):
        config_from_dict({"autointerp": {"max_retries": -1}})
    with pytest.raises(ConfigError, match=r"'autointerp\.temperature' is unknown"):
        config_from_dict({"autointerp": {"temperature": 0.7}})
    remote = config_from_dict({"autointerp": {"backend": "openai", "model": "m",
                                              "base_url": "http://127.0.0.1:9/v1"}})
    chat = make_chat(remote.autointerp, tmp_path)  # no request is made until chat()
    assert chat.ident == "openai:m@http://127.0.0.1:9/v1/"
    assert chat.path.parent == tmp_path / "autointerp"
