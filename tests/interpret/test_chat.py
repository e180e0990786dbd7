"""LocalChat's chunked prefill against one plain ``generate``, and its stop between chunks
(the real SmolLM2 on one thread)."""

from __future__ import annotations

import pytest
import torch

from sae_med.interpret import chat
from sae_med.interpret.chat import GenerationStopped, LocalChat

PROMPT = [{"role": "user", "content": "Name the organs of the chest and what each does. " * 6}]


@pytest.fixture(scope="module")
def smollm2():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LocalChat(max_new_tokens=8)
    torch.set_num_threads(threads)


def test_chunked_prefill_matches_one_plain_generate(smollm2, monkeypatch):
    monkeypatch.setattr(chat, "PREFILL_CHUNK", 16)
    enc = smollm2._encode(PROMPT)
    n = enc["input_ids"].shape[1]
    assert n > 4 * 16  # several chunks and a partial one
    gen = smollm2.generate(PROMPT, 8, logprobs=True)
    with torch.no_grad():
        plain = smollm2.hf.generate(**enc, max_new_tokens=8, do_sample=False,
                                    pad_token_id=smollm2.tokenizer.eos_token_id,
                                    output_logits=True, return_dict_in_generate=True)
    assert gen.token_ids == plain.sequences[0, n:].tolist()
    for lp, logits in zip(gen.logprobs, plain.logits, strict=True):
        torch.testing.assert_close(lp, logits[0].float().log_softmax(-1), atol=1e-4, rtol=0)


def test_stop_ends_a_long_prompt_between_chunks(smollm2, monkeypatch):
    monkeypatch.setattr(chat, "PREFILL_CHUNK", 16)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 2  # true before the third chunk

    calls = smollm2.n_calls
    with pytest.raises(GenerationStopped, match="stopped after 32 of"):
        smollm2.generate(PROMPT, 8, stop=stop)
    assert smollm2.n_calls == calls + 1 and not smollm2._lock.locked()
