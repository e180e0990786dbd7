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
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sae_med.llm import SMOLLM2, TOP_LOGPROBS, ChatBackend, LocalChat

log = logging.getLogger(__name__)


def _logprob_entry(tokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _with_logprobs(backend: LocalChat, messages: list[dict[str, str]], max_tokens: int | None,
                   top: int) -> tuple[str, str, dict[str, Any]]:
    """(text, finish_reason, OpenAI's ``logprobs`` block) of a greedy generation."""
    gen = backend.generate(messages, max_tokens, logprobs=True)
    tok, content = backend.tokenizer, []
    for token_id, lp in zip(gen.token_ids, gen.logprobs, strict=True):
        best = lp.topk(top) if top else None
        content.append({**_logprob_entry(tok, token_id, float(lp[token_id])),
                        "top_logprobs": [] if best is None else [
                            _logprob_entry(tok, i, v) for v, i in
                            zip(best.values.tolist(), best.indices.tolist(), strict=True)]})
    return gen.text, "stop" if gen.stopped else "length", {"content": content, "refusal": None}


def _handler(backend: ChatBackend, model_name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, body: dict[str, Any]) -> None:
            blob = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error",
                                          "code": status}})

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") != "/v1/models":
                return self._error(404, f"no route {self.path}")
            self._send(200, {"object": "list", "data": [
                {"id": model_name, "object": "model", "owned_by": "sae-med"}]})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}")
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages = [{"role": m["role"], "content": m["content"]}
                            for m in req["messages"]]
                max_tokens = req.get("max_tokens") or req.get("max_completion_tokens")
                max_tokens = int(max_tokens) if max_tokens else None
                top = int(req.get("top_logprobs") or 0) if req.get("logprobs") else None
            except (ValueError, KeyError, TypeError) as err:
                return self._error(400, f"bad request: {err!r}")
            if top is not None and not 0 <= top <= TOP_LOGPROBS:
                return self._error(400, f"top_logprobs must be in [0, {TOP_LOGPROBS}]")
            if top is None:
                text, finish, logprobs = backend.chat(messages, max_tokens), "stop", None
            elif isinstance(backend, LocalChat):
                text, finish, logprobs = _with_logprobs(backend, messages, max_tokens, top)
            else:
                return self._error(400, "logprobs are not supported by this backend")
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "finish_reason": finish, "logprobs": logprobs,
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("llm_server: " + fmt, *args)

    return Handler


def serve(backend: ChatBackend, host: str = "127.0.0.1", port: int = 0,
          model_name: str = SMOLLM2, background: bool = True) -> ThreadingHTTPServer:
    """Start serving ``backend``; ``port=0`` picks a free port (``server.server_port``).

    With ``background`` the server runs in a daemon thread and is returned at once; stop it
    with ``server.shutdown()``. Otherwise this blocks until interrupted.
    """
    server = ThreadingHTTPServer((host, port), _handler(backend, model_name))
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
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=SMOLLM2, help="embedded name, hub id or local path")
    p.add_argument("--max-new-tokens", type=int, default=48)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    serve(LocalChat(args.model, args.max_new_tokens), args.host, args.port, args.model,
          background=False)


if __name__ == "__main__":
    main()
