"""A minimal OpenAI-compatible chat server around :class:`sae_med.llm.LocalChat`.

``POST /v1/chat/completions`` (``messages``, ``max_tokens``, ``logprobs``, ``top_logprobs``;
decoding is always greedy, the requested model name is not checked, token counts in
``usage`` are zeros) and ``GET /v1/models``. With ``logprobs`` the response carries
OpenAI's ``choices[0].logprobs.content``: per generated token (a final end-of-sequence
token included, as vLLM does) its ``token``, ``logprob``, ``bytes`` (UTF-8 of the decoded
text) and the ``top_logprobs`` most likely alternatives, from the model's raw next-token
distribution. It lets the OpenAI backend (p_yes included) be tested offline against a real
model, and serves the embedded SmolLM2 to any OpenAI client::

    python -m sae_med.llm_server --port 8000     # then base_url=http://127.0.0.1:8000/v1

One client cannot stall or exhaust it (see :class:`ServerLimits`): bodies, prompts and
``max_tokens`` are bounded, a generation stops at its deadline or when its client leaves,
requests beyond a bounded queue get 503 at once, and every invalid request gets a 400
with an OpenAI-style error body. Beyond loopback a bearer token is required.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sae_med.llm import SMOLLM2, TOP_LOGPROBS, ChatBackend, LocalChat

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server."""

    max_body_bytes: int = 1 << 20
    """Larger request bodies get 413 without being read."""
    max_tokens_cap: int = 1024
    """Largest ``max_tokens`` accepted (400 beyond it)."""
    request_timeout_s: float = 120.0
    """Wall time of one request, queueing included; generation stops at it."""
    max_pending: int = 8
    """Completions running or waiting for the model; more get 503 with ``Retry-After``."""
    socket_timeout_s: float = 30.0
    """A client silent for this long mid-request is dropped (slow or lying bodies)."""
    api_key: str | None = None
    """Bearer token every request must carry (required when serving beyond loopback)."""


class RequestError(Exception):
    """An invalid request: answered with ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


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


def _client_gone(sock: socket.socket) -> bool:
    """Whether the peer closed its end (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _handler(backend: ChatBackend, model_name: str, limits: ServerLimits,
             pending: threading.BoundedSemaphore) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = limits.socket_timeout_s

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
            self._send(err.status, {"error": {"message": err.message, "type": kind,
                                              "param": err.param,
                                              "code": err.code or err.status}}, headers)

        def _authorised(self) -> bool:
            if limits.api_key is None:
                return True
            got = self.headers.get("Authorization", "")
            if hmac.compare_digest(got.encode(), f"Bearer {limits.api_key}".encode()):
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
                {"id": model_name, "object": "model", "owned_by": "sae-med"}]})

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
            if length > limits.max_body_bytes:
                raise RequestError(413, f"body of {length} bytes exceeds the limit of "
                                        f"{limits.max_body_bytes}")
            body = self.rfile.read(length)
            if len(body) != length:
                raise RequestError(400, f"body ended after {len(body)} of {length} bytes")
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
                except TimeoutError:
                    self.close_connection = True
                    raise RequestError(408, "timed out reading the body") from None
                req = parse_chat_request(body, limits)
                if not pending.acquire(blocking=False):
                    return self._error(RequestError(503, "server busy: too many requests in "
                                                         "flight; retry later",
                                                    code="server_busy"), {"Retry-After": "1"})
                try:
                    self._complete(req, start)
                finally:
                    pending.release()
            except RequestError as err:
                self._error(err)
            except Exception as err:  # noqa: BLE001 - the client gets a 500, not a reset
                log.exception("llm_server: request failed")
                self._error(RequestError(500, f"generation failed: {type(err).__name__}"))

        def _complete(self, req: ChatRequest, start: float) -> None:
            budget = req.max_tokens
            context = getattr(backend, "context_length", None)
            if context is not None and hasattr(backend, "prompt_tokens"):
                n = backend.prompt_tokens(req.messages)
                need = n + (budget or getattr(backend, "max_new_tokens", 0))
                if need > context:
                    raise RequestError(400, f"prompt of {n} tokens plus max_tokens exceeds the "
                                            f"model's context of {context} tokens", "messages",
                                       "context_length_exceeded")
            deadline = start + limits.request_timeout_s
            conn = self.connection

            def stop() -> bool:
                return time.monotonic() > deadline or _client_gone(conn)

            logprobs = None
            if hasattr(backend, "generate"):
                gen = backend.generate(req.messages, budget, logprobs=req.top_logprobs
                                       is not None, stop=stop)
                text, finish = gen.text, "stop" if gen.stopped else "length"
                if req.top_logprobs is not None:
                    logprobs = _logprobs_block(backend, gen, req.top_logprobs)
            elif req.top_logprobs is None:
                text, finish = backend.chat(req.messages, budget), "stop"
            else:
                raise RequestError(400, "logprobs are not supported by this backend",
                                   "logprobs")
            if _client_gone(conn):
                log.info("llm_server: client left; generation stopped")
                self.close_connection = True
                return
            if time.monotonic() > deadline:
                log.warning("llm_server: request hit its %.0f s limit; answer cut short",
                            limits.request_timeout_s)
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "finish_reason": finish, "logprobs": logprobs,
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("llm_server: " + fmt, *args)

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the listen backlog: a burst queues instead of being reset
    daemon_threads = True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(backend: ChatBackend, host: str = "127.0.0.1", port: int = 0,
          model_name: str = SMOLLM2, background: bool = True,
          limits: ServerLimits | None = None) -> ThreadingHTTPServer:
    """Start serving ``backend``; ``port=0`` picks a free port (``server.server_port``).

    With ``background`` the server runs in a daemon thread and is returned at once; stop it
    with ``server.shutdown()``. Otherwise this blocks until interrupted. Serving beyond
    loopback requires ``limits.api_key``.
    """
    limits = limits or ServerLimits()
    if limits.api_key is None and not is_loopback(host):
        raise ValueError(f"serving on {host} (beyond loopback) needs an API key: set "
                         f"--api-key-env to a variable holding one")
    server = _Server((host, port), _handler(backend, model_name, limits,
                                            threading.BoundedSemaphore(limits.max_pending)))
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
    p = argparse.ArgumentParser(prog="python -m sae_med.llm_server", description=__doc__,
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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        p.error(f"--api-key-env {args.api_key_env}: that variable is empty or unset")
    limits = ServerLimits(max_tokens_cap=args.max_tokens_cap,
                          request_timeout_s=args.request_timeout,
                          max_pending=args.max_pending, api_key=key)
    if key is None and not is_loopback(args.host):
        p.error(f"--host {args.host} is beyond loopback: give --api-key-env")
    serve(LocalChat(args.model, args.max_new_tokens), args.host, args.port, args.model,
          background=False, limits=limits)


if __name__ == "__main__":
    main()
