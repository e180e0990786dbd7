"""A minimal OpenAI-compatible chat server around :class:`sae_med.interpret.chat.LocalChat`.

``POST /v1/chat/completions`` (``messages``, ``max_tokens``, ``logprobs``, ``top_logprobs``;
decoding is always greedy, the requested model name is not checked) and ``GET /v1/models``.
With ``logprobs`` the response carries OpenAI's ``choices[0].logprobs.content``: per
generated token (a final end-of-sequence token included, as vLLM does) its ``token``,
``logprob``, ``bytes`` (UTF-8 of the decoded text) and the ``top_logprobs`` most likely
alternatives, from the model's raw next-token distribution. It lets the OpenAI backend
(p_yes included) be tested offline against a real model, and serves the embedded SmolLM2
to any OpenAI client::

    python -m sae_med.interpret.chat_server --port 8000     # then base_url=http://127.0.0.1:8000/v1

One client cannot stall or exhaust it (see :class:`ServerLimits`): bodies, prompt
characters (checked before tokenising), prompt tokens and ``max_tokens`` are bounded; a
request must arrive within a deadline however slowly its bytes trickle in; reading the
prompt and generating share one time budget and stop when the client leaves; a request
waits for the model a bounded time, first come first served, then gets 503 with
``Retry-After``, as do requests and connections beyond their caps; every invalid request
gets a 400 with an OpenAI-style error body. Beyond loopback a bearer token is required.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import hmac
import io
import ipaddress
import json
import logging
import math
import os
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sae_med.interpret.chat import (
    SMOLLM2,
    TOP_LOGPROBS,
    ChatBackend,
    GenerationStopped,
    LocalChat,
    concurrency,
)

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server."""

    max_body_bytes: int = 256 << 10
    """Larger request bodies get 413 without being read (room for ``max_prompt_chars`` of
    JSON-escaped non-ASCII text)."""
    max_prompt_chars: int = 32_768
    """Characters of all message contents together; more get 400 before tokenising (a
    token spans at least one character, so this bounds the tokeniser's work)."""
    max_prompt_tokens: int = 2048
    """Tokens of the chat-templated prompt; more get 400 before the model runs. Well under
    SmolLM2's context of 8,192, it bounds how long one request's prefill holds the model."""
    max_tokens_cap: int = 1024
    """Largest ``max_tokens`` accepted (400 beyond it)."""
    request_timeout_s: float = 120.0
    """Wall time of one request once its headers are in: reading the body, waiting for the
    model, reading the prompt and generating share it; generation stops at it, a prompt
    not yet read through gets 503."""
    max_queue_wait_s: float = 10.0
    """Longest wait for the model while other requests use it; then 503 with
    ``Retry-After`` instead of a time-out."""
    max_pending: int = 8
    """Completions running or waiting for the model; more get 503 with ``Retry-After``."""
    max_connections: int = 64
    """Open connections; more are answered 503 and closed at once (each one holds a
    thread)."""
    read_timeout_s: float = 30.0
    """A request's headers and body must arrive within this (a client sending one byte
    every few seconds never trips a per-read time-out)."""
    socket_timeout_s: float = 30.0
    """A client silent for this long is dropped."""
    api_key: str | None = None
    """Bearer token every request must carry (required when serving beyond loopback)."""


class RequestError(Exception):
    """An invalid request: answered with ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after
        """Seconds a client should wait before trying again (the ``Retry-After`` header)."""


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` request."""

    messages: list[dict[str, str]]
    max_tokens: int | None
    top_logprobs: int | None
    """None: no logprobs asked for."""


def parse_chat_request(body: bytes, limits: ServerLimits) -> ChatRequest:
    """Validate a request body; :class:`RequestError` (400) says what is wrong."""
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"body is not valid JSON: {err}") from None
    if not isinstance(req, dict):
        raise RequestError(400, "body must be a JSON object")
    raw = req.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "'messages' must be a non-empty list", "messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(400, f"messages[{i}] must be an object with a 'role' in "
                                    f"{ROLES}", f"messages[{i}].role")
        if not isinstance(m.get("content"), str):
            raise RequestError(400, f"messages[{i}].content must be a string",
                               f"messages[{i}].content")
        messages.append({"role": m["role"], "content": m["content"]})
    chars = sum(len(m["content"]) for m in messages)
    if chars > limits.max_prompt_chars:
        raise RequestError(400, f"messages hold {chars} characters; this server reads at "
                                f"most {limits.max_prompt_chars}", "messages",
                           "context_length_exceeded")
    max_tokens = req.get("max_tokens", req.get("max_completion_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(400, "'max_tokens' must be a positive integer", "max_tokens")
        if max_tokens > limits.max_tokens_cap:
            raise RequestError(400, f"'max_tokens' {max_tokens} exceeds this server's cap of "
                                    f"{limits.max_tokens_cap}", "max_tokens")
    top = None
    if req.get("logprobs"):
        top = req.get("top_logprobs") or 0
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= TOP_LOGPROBS:
            raise RequestError(400, f"'top_logprobs' must be an integer in [0, {TOP_LOGPROBS}]",
                               "top_logprobs")
    return ChatRequest(messages, max_tokens, top)


def _logprob_entry(tokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _logprobs_block(backend: LocalChat, gen: Any, top: int) -> dict[str, Any]:
    """OpenAI's ``logprobs`` block of a generation made with ``logprobs=True``."""
    tok, content = backend.tokenizer, []
    for token_id, lp in zip(gen.token_ids, gen.logprobs, strict=True):
        best = lp.topk(top) if top else None
        content.append({**_logprob_entry(tok, token_id, float(lp[token_id])),
                        "top_logprobs": [] if best is None else [
                            _logprob_entry(tok, i, v) for v, i in
                            zip(best.values.tolist(), best.indices.tolist(), strict=True)]})
    return {"content": content, "refusal": None}


class ModelSlots:
    """The backend's places (one for an in-process model), handed out first come, first
    served: a request that gets none within its wait is refused rather than left to time
    out behind a long one."""

    def __init__(self, n: int, retry_cap_s: float):
        self.retry_cap_s = retry_cap_s
        self._cond = threading.Condition()
        self._free = n
        self._queue: collections.deque[object] = collections.deque()
        self._deadlines: dict[object, float] = {}
        """Holder -> the monotonic time by which it gives its place back."""

    def acquire(self, wait_s: float, deadline: float) -> object | None:
        """A ticket to pass to :meth:`release`; None after ``wait_s`` without a place."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            got = self._cond.wait_for(lambda: self._queue[0] is ticket and self._free > 0,
                                      timeout=max(wait_s, 0.0))
            self._queue.remove(ticket)
            if got:
                self._free -= 1
                self._deadlines[ticket] = deadline
            self._cond.notify_all()  # the next in line may be first now
        return ticket if got else None

    def release(self, ticket: object) -> None:
        with self._cond:
            del self._deadlines[ticket]
            self._free += 1
            self._cond.notify_all()

    def retry_after(self) -> int:
        """Seconds until the first holder's deadline, at least 1 and at most
        ``retry_cap_s`` (a deadline is the worst case: most answers take seconds)."""
        with self._cond:
            first = min(self._deadlines.values(), default=time.monotonic())
        return max(1, math.ceil(min(first - time.monotonic(), self.retry_cap_s)))


class _DeadlineReader(io.RawIOBase):
    """Socket reads that fail once ``deadline`` (monotonic) has passed, so a request must
    arrive in time however slowly its bytes trickle in."""

    def __init__(self, sock: socket.socket, idle_s: float):
        self.sock, self.idle_s, self.deadline = sock, idle_s, math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long to arrive")
        self.sock.settimeout(min(self.idle_s, left))
        return self.sock.recv_into(buf)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def _trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc keeps a large request's buffers and
    activations otherwise, and the server's memory only grows)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _client_gone(sock: socket.socket) -> bool:
    """Whether the peer closed its end (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _check_prompt(backend: ChatBackend, req: ChatRequest, limits: ServerLimits) -> int | None:
    """Prompt tokens (None: the backend cannot count them); :class:`RequestError` (400) if
    they pass ``limits.max_prompt_tokens`` or, with ``max_tokens``, the model's context."""
    if not hasattr(backend, "prompt_tokens"):
        return None
    n = backend.prompt_tokens(req.messages)
    if n > limits.max_prompt_tokens:
        raise RequestError(400, f"prompt of {n} tokens exceeds this server's limit of "
                                f"{limits.max_prompt_tokens}", "messages",
                           "context_length_exceeded")
    context = getattr(backend, "context_length", None)
    need = n + (req.max_tokens or getattr(backend, "max_new_tokens", 0))
    if context is not None and need > context:
        raise RequestError(400, f"prompt of {n} tokens plus max_tokens exceeds the model's "
                                f"context of {context} tokens", "messages",
                           "context_length_exceeded")
    return n


def _busy(message: str, retry_after: int) -> RequestError:
    return RequestError(503, f"server busy: {message}; retry later", code="server_busy",
                        retry_after=retry_after)


@dataclass(frozen=True)
class HandlerContext:
    """What every request of one server shares."""

    backend: ChatBackend
    model_name: str
    limits: ServerLimits
    pending: threading.BoundedSemaphore
    """Requests in flight (beyond it: 503)."""
    slots: ModelSlots


class ChatHandler(BaseHTTPRequestHandler):
    """The server's requests: ``GET /v1/models`` and ``POST /v1/chat/completions``.
    :func:`_handler` makes a subclass bound to one :class:`HandlerContext`."""

    protocol_version = "HTTP/1.1"
    ctx: HandlerContext

    def setup(self) -> None:
        super().setup()
        self.reader = _DeadlineReader(self.connection, self.ctx.limits.socket_timeout_s)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        self.reader.deadline = time.monotonic() + self.ctx.limits.read_timeout_s
        super().handle_one_request()

    def _send(self, status: int, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        blob = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(blob)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(blob)
        except OSError:  # the client left; nobody to tell
            self.close_connection = True

    def _error(self, err: RequestError, headers: dict[str, str] | None = None) -> None:
        kind = ("invalid_request_error" if err.status < 500 else "server_error")
        if err.retry_after is not None:
            headers = {**(headers or {}), "Retry-After": str(err.retry_after)}
        self._send(err.status, {"error": {"message": err.message, "type": kind,
                                          "param": err.param,
                                          "code": err.code or err.status}}, headers)

    def _authorised(self) -> bool:
        if self.ctx.limits.api_key is None:
            return True
        got = self.headers.get("Authorization", "")
        if hmac.compare_digest(got.encode(), f"Bearer {self.ctx.limits.api_key}".encode()):
            return True
        self.close_connection = True
        self._error(RequestError(401, "missing or wrong bearer token", code="invalid_api_key"),
                    {"WWW-Authenticate": "Bearer"})
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authorised():
            return
        if self.path.rstrip("/") != "/v1/models":
            return self._error(RequestError(404, f"no route {self.path}"))
        self._send(200, {"object": "list", "data": [
            {"id": self.ctx.model_name, "object": "model", "owned_by": "sae-med"}]})

    def _read_body(self) -> bytes:
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise RequestError(411, "a Content-Length header is required")
        try:
            length = int(raw)
        except ValueError:
            raise RequestError(400, f"bad Content-Length {raw[:40]!r}") from None
        if length < 0:
            raise RequestError(400, f"bad Content-Length {length}")
        if length > self.ctx.limits.max_body_bytes:
            raise RequestError(413, f"body of {length} bytes exceeds the limit of "
                                    f"{self.ctx.limits.max_body_bytes}")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise RequestError(408, "timed out reading the body") from None
        if len(body) != length:
            raise RequestError(400, f"body ended after {len(body)} of {length} bytes")
        self.reader.deadline = math.inf  # arrived: the generation has its own deadline
        self.connection.settimeout(self.ctx.limits.socket_timeout_s)
        return body

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorised():
            return
        start = time.monotonic()
        try:
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.close_connection = True  # its body is left unread
                raise RequestError(404, f"no route {self.path}")
            try:
                body = self._read_body()
            except RequestError:
                self.close_connection = True
                raise
            req = parse_chat_request(body, self.ctx.limits)
            del body
            if not self.ctx.pending.acquire(blocking=False):
                raise _busy("too many requests in flight", self.ctx.slots.retry_after())
            try:
                self._complete(req, start)
            finally:
                self.ctx.pending.release()
        except RequestError as err:
            self._error(err)
        except Exception as err:  # noqa: BLE001 - the client gets a 500, not a reset
            log.exception("llm_server: request failed")
            self._error(RequestError(500, f"generation failed: {type(err).__name__}"))

    def _complete(self, req: ChatRequest, start: float) -> None:
        n_prompt = _check_prompt(self.ctx.backend, req, self.ctx.limits)
        deadline = start + self.ctx.limits.request_timeout_s
        wait = min(self.ctx.limits.max_queue_wait_s, deadline - time.monotonic())
        ticket = self.ctx.slots.acquire(wait, deadline)
        if ticket is None:
            raise _busy("the model is answering other requests", self.ctx.slots.retry_after())
        try:
            text, finish, logprobs, n_new = self._generate(req, deadline)
        finally:
            self.ctx.slots.release(ticket)
            _trim_heap()
        if _client_gone(self.connection):
            log.info("llm_server: client left; generation stopped")
            self.close_connection = True
            return
        if time.monotonic() > deadline:
            log.warning("llm_server: request hit its %.0f s limit; answer cut short",
                        self.ctx.limits.request_timeout_s)
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": self.ctx.model_name,
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": logprobs,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": n_prompt or 0, "completion_tokens": n_new,
                      "total_tokens": (n_prompt or 0) + n_new}})

    def _generate(self, req: ChatRequest, deadline: float
                  ) -> tuple[str, str, dict[str, Any] | None, int]:
        """(text, finish reason, logprobs block, generated tokens) of ``req``."""
        conn = self.connection

        def stop() -> bool:
            return time.monotonic() > deadline or _client_gone(conn)

        if not hasattr(self.ctx.backend, "generate"):
            if req.top_logprobs is not None:
                raise RequestError(400, "logprobs are not supported by this backend",
                                   "logprobs")
            return self.ctx.backend.chat(req.messages, req.max_tokens), "stop", None, 0
        try:
            gen = self.ctx.backend.generate(req.messages, req.max_tokens,
                                            logprobs=req.top_logprobs is not None, stop=stop)
        except GenerationStopped as err:
            limit = self.ctx.limits.request_timeout_s
            raise RequestError(503, f"the request's {limit:.0f} s ran out while reading its "
                                    f"prompt ({err}); send a shorter prompt", "messages",
                               "timeout") from None
        logprobs = (None if req.top_logprobs is None
                    else _logprobs_block(self.ctx.backend, gen, req.top_logprobs))
        return (gen.text, "stop" if gen.stopped else "length", logprobs,
                len(gen.token_ids))

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("llm_server: " + fmt, *args)


def _handler(backend: ChatBackend, model_name: str, limits: ServerLimits,
             pending: threading.BoundedSemaphore, slots: ModelSlots
             ) -> type[BaseHTTPRequestHandler]:
    ctx = HandlerContext(backend, model_name, limits, pending, slots)
    return type("Handler", (ChatHandler,), {"ctx": ctx, "timeout": limits.socket_timeout_s})


_BUSY_BODY = json.dumps({"error": {"message": "server busy: too many connections; retry "
                                              "later", "type": "server_error", "param": None,
                                   "code": "server_busy"}}).encode()
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
         % (len(_BUSY_BODY), _BUSY_BODY))


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the listen backlog: a burst queues instead of being reset
    daemon_threads = True
    max_connections = 64

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._open = 0
        self._count = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve a connection in a thread of its own, or answer 503 at once beyond
        ``max_connections`` (each holds a thread for as long as its client keeps it)."""
        with self._count:
            full = self._open >= self.max_connections
            self._open += not full
        if full:
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count:
                self._open -= 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(backend: ChatBackend, host: str = "127.0.0.1", port: int = 0,
                model_name: str = SMOLLM2, limits: ServerLimits | None = None
                ) -> ThreadingHTTPServer:
    """A server for ``backend``, listening but not yet serving (see :func:`serve`)."""
    limits = limits or ServerLimits()
    if limits.api_key is None and not is_loopback(host):
        raise ValueError(f"serving on {host} (beyond loopback) needs an API key: set "
                         f"--api-key-env to a variable holding one")
    slots = ModelSlots(concurrency(backend), limits.max_queue_wait_s)
    server = _Server((host, port), _handler(backend, model_name, limits,
                                            threading.BoundedSemaphore(limits.max_pending),
                                            slots))
    server.max_connections = limits.max_connections
    return server


def serve(backend: ChatBackend, host: str = "127.0.0.1", port: int = 0,
          model_name: str = SMOLLM2, background: bool = True,
          limits: ServerLimits | None = None) -> ThreadingHTTPServer:
    """Start serving ``backend``; ``port=0`` picks a free port (``server.server_port``).

    With ``background`` the server runs in a daemon thread and is returned at once; stop it
    with ``server.shutdown()``. Otherwise this blocks until interrupted. Serving beyond
    loopback requires ``limits.api_key``.
    """
    server = make_server(backend, host, port, model_name, limits)
    log.info("serving %s at http://%s:%d/v1", model_name, host, server.server_port)
    if background:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    else:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sae_med.interpret.chat_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ServerLimits()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=SMOLLM2, help="embedded name, hub id or local path")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--api-key-env", default="",
                   help="environment variable holding the bearer token clients must send "
                        "(required beyond loopback)")
    p.add_argument("--max-tokens-cap", type=int, default=d.max_tokens_cap)
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s)
    p.add_argument("--max-pending", type=int, default=d.max_pending)
    p.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    p.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars)
    p.add_argument("--max-queue-wait", type=float, default=d.max_queue_wait_s)
    p.add_argument("--read-timeout", type=float, default=d.read_timeout_s)
    p.add_argument("--max-connections", type=int, default=d.max_connections)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        p.error(f"--api-key-env {args.api_key_env}: that variable is empty or unset")
    limits = ServerLimits(max_tokens_cap=args.max_tokens_cap,
                          request_timeout_s=args.request_timeout,
                          max_pending=args.max_pending,
                          max_prompt_tokens=args.max_prompt_tokens,
                          max_prompt_chars=args.max_prompt_chars,
                          max_queue_wait_s=args.max_queue_wait, read_timeout_s=args.read_timeout,
                          max_connections=args.max_connections, api_key=key)
    if key is None and not is_loopback(args.host):
        p.error(f"--host {args.host} is beyond loopback: give --api-key-env")
    serve(LocalChat(args.model, args.max_new_tokens), args.host, args.port, args.model,
          background=False, limits=limits)


if __name__ == "__main__":
    main()
