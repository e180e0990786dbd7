"""Abuse of the chat server as a user would try it: the real SmolLM2 behind
``python -m sae_med.interpret.chat_server`` (default limits) on loopback, and for each kind of abuse
the runs, how many the server survived (the abusive request got its documented answer in
time, and the server went on answering), the data lost (normal requests sent meanwhile that
got no answer or a wrong one: every 200 must equal the reference answer) and the server's
resident memory before and after.

    .venv/bin/python benchmarks/bench_server.py [--json rows.json] [--slow-every 3]

- long prompts: ~7,900 tokens (over the character cap), ~3,000 tokens (over the token cap)
  and ~1,900 tokens (served within the time budget), each with a normal request beside it;
- oversized bodies: 1 MiB bodies (over the body cap) and 200 kB prompts (over the
  character cap), then a normal request;
- slow clients: clients sending one byte every ``--slow-every`` seconds, with a normal
  request meanwhile;
- bursts: ``--burst`` normal requests at once.

Prints Markdown rows (``fault | runs | survived | data lost | RSS before → after``);
``--json`` writes them for ``benchmarks/mutation_check.py --abuse``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
NORMAL = "Name one organ of the human body."


class Reply(NamedTuple):
    status: int
    """0: the connection ended without an answer."""
    headers: str
    body: dict
    seconds: float


class Row(NamedTuple):
    fault: str
    runs: int
    survived: int
    lost: int
    rss_before_mb: float
    rss_after_mb: float


def request(body: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def chat(content: str, max_tokens: int = 8) -> bytes:
    return request(json.dumps({"messages": [{"role": "user", "content": content}],
                               "max_tokens": max_tokens}).encode())


def ask(port: int, raw: bytes, timeout: float = 300, every_s: float = 0.0) -> Reply:
    """Send ``raw`` (one byte every ``every_s`` seconds if set) and read the answer."""
    t0 = time.monotonic()
    buf = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s, \
            contextlib.suppress(OSError):
        if every_s:
            for i in range(len(raw)):
                s.send(raw[i:i + 1])
                time.sleep(every_s)
        else:
            s.sendall(raw)
        while chunk := s.recv(65536):
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        parsed = {}
    return Reply(int(head.split()[1]) if buf else 0, head.decode(errors="replace"), parsed,
                 time.monotonic() - t0)


def text(r: Reply) -> str | None:
    return r.body["choices"][0]["message"]["content"] if r.status == 200 else None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[tuple[int, int]]:
    """(port, pid) of ``python -m sae_med.interpret.chat_server`` on loopback, stopped
    afterwards."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sae_med.interpret.chat_server", "--port", "0",
                             "--max-new-tokens", "16"], env=env, stderr=subprocess.PIPE,
                            text=True)
    try:
        port = None
        for line in proc.stderr:  # the log line naming the port it got
            if m := re.search(r"serving .* at http://127\.0\.0\.1:(\d+)/v1", line):
                port = int(m.group(1))
                break
        if port is None:
            raise RuntimeError(f"the server exited ({proc.wait()}) before listening")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep it drained
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def together(*calls: Callable[[], Reply], stagger_s: float = 0.3) -> list[Reply]:
    """Run ``calls`` at once (each ``stagger_s`` after the one before); their replies."""
    out: list[Reply | None] = [None] * len(calls)

    def run(i: int) -> None:
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
        time.sleep(stagger_s)
    for t in threads:
        t.join()
    return [r for r in out if r is not None]


def refused_fast(r: Reply, status: int, bound_s: float) -> bool:
    return r.status == status and r.seconds < bound_s


def normal_ok(r: Reply, reference: str, bound_s: float) -> bool:
    """Answered with the reference, or refused with a Retry-After, within ``bound_s``."""
    busy = r.status == 503 and "Retry-After:" in r.headers
    return (text(r) == reference or busy) and r.seconds < bound_s


def long_prompts(port: int, reference: str, bound_s: float) -> tuple[int, int, int]:
    runs = survived = lost = 0
    for words, want in ((7900, 400), (3000, 400), (1900, 200)):
        long, normal = together(lambda w=words: ask(port, chat("word " * w)),
                                lambda: ask(port, chat(NORMAL)))
        ok_long = long.status == want and (want == 200 or long.seconds < 5)
        runs, survived = runs + 1, survived + (ok_long and normal_ok(normal, reference,
                                                                     bound_s))
        lost += not normal_ok(normal, reference, bound_s)
        print(f"  long prompt of {words} words: {long.status} in {long.seconds:.1f} s; "
              f"normal beside it: {normal.status} in {normal.seconds:.1f} s", flush=True)
    return runs, survived, lost


def oversized_bodies(port: int, reference: str, bound_s: float) -> tuple[int, int, int]:
    big = request(b'{"messages": [{"role": "user", "content": "' + b"x" * (1 << 20) + b'"}]}')
    replies = [ask(port, big) for _ in range(4)] + [
        ask(port, chat("x" * 200_000)) for _ in range(4)]
    survived = sum(refused_fast(r, s, 5) for r, s in zip(replies, [413] * 4 + [400] * 4,
                                                         strict=True))
    after = ask(port, chat(NORMAL))
    print(f"  bodies: {[r.status for r in replies]} in at most "
          f"{max(r.seconds for r in replies):.2f} s; normal after: {after.status}", flush=True)
    return len(replies), survived, int(not normal_ok(after, reference, bound_s))


def slow_clients(port: int, reference: str, bound_s: float, every_s: float, n: int = 4
                 ) -> tuple[int, int, int]:
    calls = [lambda: ask(port, chat(NORMAL), every_s=every_s) for _ in range(n)]
    *slow, normal = together(*calls, lambda: ask(port, chat(NORMAL)), stagger_s=0.05)
    cut_off = sum(r.status in (0, 408) and r.seconds < 45 for r in slow)
    print(f"  {n} clients at one byte every {every_s:g} s: {[r.status for r in slow]} after "
          f"{max(r.seconds for r in slow):.0f} s; normal meanwhile: {normal.status} in "
          f"{normal.seconds:.1f} s", flush=True)
    return n, cut_off, int(not normal_ok(normal, reference, bound_s))


def bursts(port: int, reference: str, bound_s: float, n: int) -> tuple[int, int, int]:
    replies = together(*[lambda: ask(port, chat(NORMAL)) for _ in range(n)], stagger_s=0)
    ok = sum(normal_ok(r, reference, bound_s) for r in replies)
    print(f"  burst of {n}: {sum(r.status == 200 for r in replies)} answered, "
          f"{sum(r.status == 503 for r in replies)} refused with Retry-After, "
          f"{n - ok} neither in time", flush=True)
    return n, ok, n - ok


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--slow-every", type=float, default=3.0)
    ap.add_argument("--burst", type=int, default=40)
    args = ap.parse_args(argv)
    bound_s = 10.0 + 20.0  # the default queue wait, then a normal answer on a loaded CPU
    rows = []
    with server(args) as (port, pid):
        reference = text(ask(port, chat(NORMAL)))
        print(f"server pid {pid} on 127.0.0.1:{port}; reference answer {reference!r}",
              flush=True)
        rounds = {"abuse: long prompts": lambda: long_prompts(port, reference, bound_s),
                  "abuse: oversized bodies": lambda: oversized_bodies(port, reference, bound_s),
                  "abuse: slow clients": lambda: slow_clients(port, reference, bound_s,
                                                              args.slow_every),
                  "abuse: bursts": lambda: bursts(port, reference, bound_s, args.burst)}
        for fault, round_ in rounds.items():
            before = rss_mb(pid)
            runs, survived, lost = round_()
            time.sleep(1.0)
            rows.append(Row(fault, runs, survived, lost, before, rss_mb(pid)))
    print("\n| fault | runs | survived | data lost | server RSS before → after (MB) |\n"
          "|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.fault} | {r.runs} | {r.survived} | {r.lost} | "
              f"{r.rss_before_mb:.0f} → {r.rss_after_mb:.0f} |")
    if args.json:
        args.json.write_text(json.dumps([r._asdict() for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
