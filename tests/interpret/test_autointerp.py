"""Automated interpretation with the real local model (SmolLM2-135M-Instruct), its HTTP twin
behind a loopback OpenAI-compatible server, and known answers for the scorer arithmetic."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import openai
import pytest
import torch
from quantile_saes import quantile_sae

from sae_med.config import AutointerpConfig, ConfigError, config_from_dict, load_config
from sae_med.interpret.autointerp import (
    DETECT_REMINDER,
    METRICS,
    ask,
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
from sae_med.interpret.chat import (
    CachedChat,
    LocalChat,
    OpenAIChat,
    concurrent_map,
    make_chat,
    p_yes_from_logprobs,
    retry_delay,
)
from sae_med.interpret.chat_server import serve
from sae_med.interpret.features import encode_cache, top_windows
from sae_med.measure.bootstrap import bootstrap_mean
from sae_med.measure.metrics import auroc

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
    s = quantile_sae(cache, 64, 0.9)  # every latent fires on about 10% of the tokens
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


def test_score_intervals_draw_the_configs_bootstrap_count(tmp_path):
    """The written comparison (the concept claim's interval among its rows) is drawn from
    ``eval.bootstrap`` replicates, like every other interval of a run, and the default
    count is that field's default."""
    import dataclasses

    import pandas as pd

    from sae_med.config import EvalConfig
    from sae_med.interpret.autointerp import RunScores, write_run_scores

    rng = np.random.default_rng(1)
    scores = {name: pd.DataFrame({m: rng.uniform(lo, lo + 0.3, 12) for m in METRICS}
                                 | {"n_failures": 0, "n_p_failures": 0})
              for name, lo in (("medical", 0.6), ("broad", 0.4))}
    budget = dataclasses.replace(AutointerpConfig(), fuzzing=False)
    cfg = load_config(None, [f"output_dir={tmp_path}", "eval.bootstrap=37"])
    out = write_run_scores(cfg, RunScores(scores, {"medical": 20.0, "broad": 20.0}, 20.0,
                                          "medical", budget))
    written = pd.read_csv(out / "comparison.csv")
    written = written[written.metric == "detection_auroc"].drop(columns="metric")
    drawn = {n: compare_scores(scores, "detection_auroc", n, cfg.seed) for n in (37, 2000)}
    cols = ["mean", "ci_low", "ci_high"]
    assert np.allclose(written[cols].to_numpy(), drawn[37][cols].to_numpy())
    assert not np.allclose(written[cols].to_numpy(), drawn[2000][cols].to_numpy())
    assert compare_scores(scores, "detection_auroc", seed=cfg.seed).equals(
        compare_scores(scores, "detection_auroc", EvalConfig().bootstrap, cfg.seed))
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


# ------------------------------------------------- concurrency and backoff over loopback

class SlowJudge:
    """A deterministic backend that takes ``delay`` seconds per answer and records the
    most requests it ever had in flight (served through the loopback OpenAI server)."""

    ident, params = "slow-judge", {}
    concurrency = 8
    """Answers it can compute at once (the server hands out that many model slots): these
    tests measure the client's concurrency limit, not the server's."""

    def __init__(self, delay: float):
        self.delay, self.in_flight, self.peak, self.n = delay, 0, 0, 0
        self._lock = threading.Lock()

    def chat(self, messages, max_new_tokens=None) -> str:
        with self._lock:
            self.in_flight += 1
            self.n += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(self.delay)
        with self._lock:
            self.in_flight -= 1
        text = messages[-1]["content"]
        if "what does the neuron detect" in text:
            return "words about medicine"
        return "yes" if len(text) % 3 == 0 else "no"  # a fixed answer per question

    def p_yes(self, messages):  # never reached: the server refuses logprobs for it
        raise AssertionError


@pytest.fixture
def slow_server():
    judge = SlowJudge(delay=0.25)
    server = serve(judge, port=0)
    yield judge, f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_http_requests_run_concurrently_up_to_the_limit(slow_server):
    judge, url = slow_server
    remote = OpenAIChat("m", url, timeout_s=30, max_retries=0, concurrency=3)
    questions = [[{"role": "user", "content": "x" * n}] for n in range(9)]
    t0 = time.monotonic()
    answers = concurrent_map(remote.chat, questions, workers=9)  # 9 threads, 3 slots
    elapsed = time.monotonic() - t0
    assert answers == ["yes" if n % 3 == 0 else "no" for n in range(9)]  # in order
    assert judge.peak == 3 and remote.n_calls == judge.n == 9
    assert 3 * 0.25 <= elapsed < 9 * 0.25 * 0.7  # three rounds, not nine


def test_interpret_sae_concurrent_equals_sequential(slow_server, model, cache, sae_acts,
                                                    tmp_path):
    judge, url = slow_server
    judge.delay = 0.01
    sae, acts = sae_acts
    W_U = model.W_U
    frames = {}
    for n in (1, 4):
        remote = OpenAIChat("m", url, timeout_s=30, max_retries=0, concurrency=n)
        judge.peak = 0
        frames[n] = interpret_sae(sae, acts, cache, model.tokenizer, W_U, remote, SMALL,
                                  progress=False)
        # latents and questions in flight together, never more than allowed
        assert judge.peak == 1 if n == 1 else 1 < judge.peak <= n
    assert frames[4].equals(frames[1])
    assert frames[1]["explanation"].eq("words about medicine").all()
    assert frames[1]["n_positive"].gt(0).all() and frames[1]["detection_auroc"].notna().all()


class _Flaky(BaseHTTPRequestHandler):
    """Answers POSTs with the statuses in ``plan`` (then 200 "yes"), noting each arrival."""

    protocol_version = "HTTP/1.1"
    plan: list[tuple[int, dict[str, str]]] = []
    arrivals: list[float] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.arrivals.append(time.monotonic())
        status, headers = self.plan.pop(0) if self.plan else (200, {})
        body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "yes"}}]}
        if status != 200:
            body = {"error": {"message": f"status {status}", "type": "test", "code": status}}
        blob = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(blob)),
                     **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(blob)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky():
    """(plan, arrivals, base_url) of a loopback server that fails as planned."""
    plan, arrivals = [], []
    handler = type("Flaky", (_Flaky,), {"plan": plan, "arrivals": arrivals})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield plan, arrivals, f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_http_retries_back_off_exponentially_then_succeed(flaky):
    plan, arrivals, url = flaky
    plan += [(503, {}), (429, {}), (500, {})]
    remote = OpenAIChat("m", url, timeout_s=30, max_retries=3, backoff_s=0.1)
    assert remote.chat([{"role": "user", "content": "hi"}]) == "yes"
    gaps = np.diff(arrivals)
    assert len(arrivals) == remote.n_calls == 4
    assert 0.1 <= gaps[0] < 0.2 <= gaps[1] < 0.4 <= gaps[2] < 0.8  # doubling each time


def test_http_retries_give_up_and_do_not_retry_client_errors(flaky):
    plan, arrivals, url = flaky
    plan += [(503, {})] * 5
    remote = OpenAIChat("m", url, timeout_s=30, max_retries=2, backoff_s=0.01)
    with pytest.raises(openai.InternalServerError):
        remote.chat([{"role": "user", "content": "hi"}])
    assert len(arrivals) == 3
    plan[:] = [(400, {})]
    with pytest.raises(openai.BadRequestError):
        remote.chat([{"role": "user", "content": "hi"}])
    assert len(arrivals) == 4  # a bad request is not worth repeating
    plan[:] = [(429, {"Retry-After": "0.3"})]  # the server's wait wins over ours
    assert remote.chat([{"role": "user", "content": "hi"}]) == "yes"
    assert 0.3 <= arrivals[-1] - arrivals[-2] < 0.45


def test_retry_delay_known_answers():
    class Err(Exception):
        def __init__(self, headers):
            self.response = type("R", (), {"headers": headers})()

    assert [retry_delay(Err({}), a, 1.0) for a in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay(Err({"retry-after": "2.5"}), 5, 1.0) == 2.5
    assert retry_delay(Err({"retry-after": "9999"}), 0, 1.0) == 60.0
    assert retry_delay(Err({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}), 1, 0.5) == 1.0
    assert retry_delay(RuntimeError(), 2, 0.5) == 2.0


def test_demo_budget_is_the_default_and_one_override_turns_it_off():
    from sae_med.interpret.autointerp import DEMO_BUDGET, run_budget

    demo = run_budget(load_config(None).autointerp)
    assert demo.demo and (demo.n_latents, demo.n_windows, demo.n_score, demo.fuzzing) == (
        DEMO_BUDGET["n_latents"], DEMO_BUDGET["n_windows"], DEMO_BUDGET["n_score"], False)
    full = load_config(None, ["autointerp.demo=false", "autointerp.n_latents=50"]).autointerp
    assert run_budget(full) is full and full.n_latents == 50


def test_local_chat_runs_on_its_own_thread_count_and_restores_it(local):
    seen = []
    hook = local.hf.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        local.p_yes([{"role": "user", "content": "Is a cat an animal?"}])
        assert seen == [local.threads] == [1] and torch.get_num_threads() == 2
    finally:
        hook.remove()
        torch.set_num_threads(before)
