"""Proof per protection: remove each protection of the fault table from a scratch copy of
the repository, one small named patch at a time, run the tests that cover it there, and
report which of them catch it (fail).

    .venv/bin/python benchmarks/mutation_check.py                 # every protection
    .venv/bin/python benchmarks/mutation_check.py cache-lock body-cap    # some of them
    .venv/bin/python benchmarks/mutation_check.py --list
        [--worktree] [--abuse rows.json] [--timeout 300]

The copy is the committed tree (``git archive HEAD``; ``--worktree`` copies the working
tree's tracked files instead) in a temporary folder, run with this interpreter; the
repository itself is never touched. First the unpatched copy must pass every selected test
(all protections: ``tests/e2e/test_faults.py`` whole, whose fault table it keeps); then each
patch is applied alone (its text must occur exactly once, so a patch that no longer fits
the code fails loudly instead of testing nothing), its tests run, and the file is
restored. A protection counts as caught when pytest reports failing tests, not when it
cannot collect them. Prints a table of the protections and, for all of them, the fault
table with a "caught by" column (``--abuse``: rows that ``benchmarks/bench_server.py
--json`` wrote, appended with the server's RSS); the last line is ``uncaught=<number of
protections no test caught>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
FAULTS = "tests/e2e/test_faults.py"


class Protection(NamedTuple):
    name: str
    faults: tuple[str, ...]
    """The fault-table rows it defends (test_faults' and bench_server's names)."""
    path: str
    """The patched file, relative to the repository."""
    old: str
    """Text found exactly once in ``path`` ..."""
    new: str
    """... and what replaces it to remove the protection."""
    tests: tuple[str, ...]
    """pytest node ids that should catch its removal."""


def _faults(test: str) -> str:
    return f"{FAULTS}::{test}"


SERVER = "sae_med/interpret/chat_server.py"
PROTECTIONS = (
    Protection("cache-lock", ("two cache builds racing on one key",),
               "sae_med/cache/activations.py",
               "with lock if distributed.rank() == 0 else contextlib.nullcontext():",
               "with contextlib.nullcontext():",
               (_faults("test_two_processes_racing_on_one_cache_key"),)),
    Protection("run-lock", ("two training runs into one folder",), "sae_med/train/sweep.py",
               "@_holding_run_lock\ndef _train(", "def _train(",
               (_faults("test_a_second_training_run_into_one_folder_is_refused"),)),
    Protection("stale-temp-files", ("kill -9 during a shard write",),
               "sae_med/cache/activations.py",
               "            stale.unlink()", "            pass",
               (_faults("test_kill_during_shard_write_resumes_to_the_same_cache"),)),
    Protection("truncated-metrics-rows",
               ("kill -9 during a checkpoint write (+ half a metrics row)",),
               "sae_med/train/records.py",
               "if (step := _metric_step(ln)) is not None and step <= last_step]", "if True]",
               (_faults("test_kill_during_checkpoint_write_and_half_a_metrics_line"),)),
    Protection("final-saes-rewritten",
               ("kill -9 after the final checkpoint, before the SAEs are saved",),
               "sae_med/train/sweep.py", "if dist.is_main() and not _saved(sw, n_steps):",
               "if dist.is_main() and start < n_steps:",
               (_faults("test_kill_after_the_final_checkpoint_before_the_saes_are_saved"),
                "tests/train/test_sweep.py::test_reusing_a_finished_run_rewrites_nothing")),
    Protection("checkpoint-checksum", ("bit flip in checkpoint.pt",), "sae_med/train/sweep.py",
               "    elif file_sha256(path) not in record:", "    elif False:",
               (_faults("test_bit_flips_in_a_checkpoint_are_refused_naming_the_previous_one"),)),
    Protection("shard-checksum", ("bit flip in a shard (.npy)",), "sae_med/cache/activations.py",
               "if (p := s.damaged_file(self.root)) is not None:", "if (p := None) is not None:",
               (_faults("test_bit_flips_in_shards_and_manifests_are_named"),)),
    Protection("manifest-checksum", ("bit flip in manifest.json",), "sae_med/cache/activations.py",
               'if "checksum" in manifest and manifest["checksum"] != stable_hash(body, 64):',
               "if False:", (_faults("test_bit_flips_in_shards_and_manifests_are_named"),)),
    Protection("damaged-shard-record", ("damaged shard record",), "sae_med/cache/activations.py",
               "    except (ValueError, TypeError) as err:\n        log.warning(\"shard record",
               "    except () as err:\n        log.warning(\"shard record",
               (_faults("test_damaged_shard_record_is_recomputed"),)),
    Protection("storage-full", ("full file system (256 KiB tmpfs)",), "sae_med/artifacts.py",
               "if err.errno in (errno.ENOSPC, errno.EDQUOT) or short_write:", "if False:",
               (_faults("test_full_and_read_only_file_systems_give_one_line"),)),
    Protection("storage-read-only", ("read-only file system",), "sae_med/artifacts.py",
               "if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):", "if False:",
               (_faults("test_full_and_read_only_file_systems_give_one_line"),)),
    Protection("umask", ("artefacts under a group-shared umask (002)",), "sae_med/artifacts.py",
               "    os.chmod(path, mode & ~umask())", "    pass",
               (_faults("test_artefacts_respect_the_umask"),)),
    Protection("yaml-one-line", ("config mistakes (YAML, directory, corpus, inf, device)",),
               "sae_med/config.py", "    except (yaml.YAMLError, UnicodeDecodeError) as err:",
               "    except () as err:",
               (_faults("test_config_mistakes_exit_with_one_line"),)),
    Protection("known-errors-one-line",
               ("known failures -> one line (hook, model, cfg.json, npz, truncated checkpoint, "
                "manifest, notebook, device)",), "sae_med/cli.py",
               "    for module, names in KNOWN_ERRORS.items():",
               "    return False\n    for module, names in KNOWN_ERRORS.items():",
               (_faults("test_known_failures_are_one_clear_line"),
                _faults("test_the_command_line_prints_one_line_and_debug_the_traceback"))),
    Protection("body-cap", ("server: invalid requests (400/404/413, none reset)",
                            "abuse: oversized bodies"), SERVER,
               "if length > limits.max_body_bytes:", "if False:",
               (_faults("test_server_answers_every_invalid_request_with_a_400"),)),
    Protection("client-gone", ("server: client disconnects mid-generation",), SERVER,
               "return time.monotonic() > deadline or _client_gone(conn)",
               "return time.monotonic() > deadline",
               (_faults("test_server_stops_generating_for_a_client_that_left_and_at_its_deadline"),)),
    Protection("generation-deadline", ("server: generation past the request time limit",),
               SERVER, "return time.monotonic() > deadline or _client_gone(conn)",
               "return _client_gone(conn)",
               (_faults("test_server_stops_generating_for_a_client_that_left_and_at_its_deadline"),)),
    Protection("pending-cap", ("server: burst of 30 requests (3 pending max)", "abuse: bursts"),
               SERVER, "if not pending.acquire(blocking=False):", "if not pending.acquire():",
               (_faults("test_server_burst_gets_answers_not_resets"),)),
    Protection("listen-backlog",
               ("server: 64 connections before the first accept (listen backlog)",), SERVER,
               "    request_queue_size = 128  # the listen backlog", "    # the listen backlog",
               (_faults("test_server_backlog_holds_a_burst_before_the_first_accept"),)),
    Protection("bearer-token", ("server: missing/wrong bearer token",), SERVER,
               "            if limits.api_key is None:\n                return True",
               "            if True:\n                return True",
               (_faults("test_server_bearer_token"),)),
    Protection("prompt-char-cap", ("server: prompts over the character / token caps",
                                   "abuse: long prompts", "abuse: oversized bodies"), SERVER,
               "if chars > limits.max_prompt_chars:", "if False:",
               (_faults("test_server_bounds_a_prompt_before_tokenising_it"),)),
    Protection("prompt-token-cap", ("server: prompts over the character / token caps",
                                    "abuse: long prompts"), SERVER,
               "if n > limits.max_prompt_tokens:", "if False:",
               (_faults("test_server_bounds_a_prompt_before_tokenising_it"),)),
    Protection("queue-wait", ("server: a long prompt beside a normal request",
                              "abuse: long prompts"), SERVER,
               "slots.acquire(min(limits.max_queue_wait_s, deadline - time.monotonic()),",
               "slots.acquire(deadline - time.monotonic(),",
               (_faults("test_server_answers_a_normal_request_beside_a_long_prompt"),)),
    Protection("prefill-deadline", ("server: a long prompt beside a normal request",
                                    "abuse: long prompts"), "sae_med/interpret/chat.py",
               "if stop is not None and stop():\n                raise GenerationStopped",
               "if False:\n                raise GenerationStopped",
               ("tests/interpret/test_chat.py::test_stop_ends_a_long_prompt_between_chunks",)),
    Protection("read-deadline", ("server: slow clients (one byte every 0.2 s)",
                                 "abuse: slow clients"), SERVER,
               "self.reader.deadline = time.monotonic() + limits.read_timeout_s",
               "self.reader.deadline = math.inf",
               (_faults("test_server_drops_slow_clients_at_the_read_deadline"),
                _faults("test_server_caps_open_connections"))),
    Protection("heap-trim", ("server: 16 requests freeing ~100 MB each (heap handed back)",
                             "abuse: bursts"), SERVER,
               "                _trim_heap()\n", "",
               (_faults("test_server_returns_the_heap_after_large_requests"),)),
    Protection("connection-cap", ("server: connections beyond the cap (4)",
                                  "abuse: slow clients"), SERVER,
               "full = self._open >= self.max_connections", "full = False",
               (_faults("test_server_caps_open_connections"),)),
)


class Run(NamedTuple):
    failed: tuple[str, ...]
    """Node ids of the tests that failed or errored."""
    passed: int
    returncode: int
    seconds: float
    tail: str
    """The end of pytest's output (for a run that could not collect its tests)."""


class Outcome(NamedTuple):
    protection: Protection
    run: Run

    @property
    def caught(self) -> bool:
        return self.run.returncode == 1 and bool(self.run.failed)


def scratch_copy(worktree: bool) -> Path:
    """The repository's committed tree (or the working tree's tracked files) in a temp
    folder, without the virtual environment or any data."""
    root = Path(tempfile.mkdtemp(prefix="sae_med_mutation_"))
    tar = root / "tree.tar"
    if worktree:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True,
                                capture_output=True).stdout.split(b"\0")
        present = b"\0".join(f for f in listed if f and (REPO / f.decode()).exists())
        subprocess.run(["tar", "-c", "--null", "-T", "-", "-f", str(tar)], cwd=REPO,
                       check=True, input=present)
    else:
        subprocess.run(["git", "archive", "-o", str(tar), "HEAD"], cwd=REPO, check=True)
    subprocess.run(["tar", "-xf", str(tar)], cwd=root, check=True)
    tar.unlink()
    return root


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), **extra}


def check_imports_from(root: Path) -> None:
    """Refuse to go on if ``sae_med`` would be imported from anywhere but the copy."""
    out = subprocess.run([sys.executable, "-c", "import sae_med; print(sae_med.__file__)"],
                         cwd=root, env=_env(root), capture_output=True, text=True, check=True)
    where = Path(out.stdout.strip()).resolve()
    if root.resolve() not in where.parents:
        sys.exit(f"sae_med imports from {where}, not the scratch copy {root}")


def run_tests(root: Path, nodes: list[str], timeout_s: int, **env: str) -> Run:
    """pytest on ``nodes`` inside the copy; which failed, from its JUnit XML."""
    xml = root / "junit.xml"
    xml.unlink(missing_ok=True)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=", f"--timeout={timeout_s}", f"--junitxml={xml}",
                          *nodes], cwd=root, env=_env(root, **env), capture_output=True,
                         text=True)
    failed, passed = [], 0
    if xml.exists():
        for case in ET.parse(xml).iter("testcase"):
            module = case.get("classname", "").replace(".", "/") + ".py"
            node = f"{module}::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(node)
            elif case.find("skipped") is None:
                passed += 1
    return Run(tuple(dict.fromkeys(failed)), passed, out.returncode, time.monotonic() - t0,
               (out.stdout + out.stderr)[-1500:])


def mutate(root: Path, p: Protection, timeout_s: int) -> Outcome:
    """Run ``p``'s tests with ``p`` removed from the copy, then restore the file."""
    path = root / p.path
    source = path.read_text()
    if source.count(p.old) != 1:
        sys.exit(f"patch {p.name}: its text occurs {source.count(p.old)} times in {p.path} "
                 f"(must be once); update the patch to the code")
    path.write_text(source.replace(p.old, p.new))
    try:
        return Outcome(p, run_tests(root, list(p.tests), timeout_s))
    finally:
        path.write_text(source)


def _short(node: str) -> str:
    module, _, name = node.partition("::")
    return f"{Path(module).stem}::{name.split('[')[0]}"


def protection_table(outcomes: list[Outcome]) -> list[str]:
    lines = ["| protection | patched file | caught by | s |", "|---|---|---|---:|"]
    for o in outcomes:
        by = (", ".join(f"`{_short(n)}`" for n in dict.fromkeys(
            _short(n) for n in o.run.failed)) if o.caught else
            f"**not caught** (pytest exit {o.run.returncode})")
        lines.append(f"| `{o.protection.name}` | {o.protection.path} | {by} | "
                     f"{o.run.seconds:.0f} |")
    return lines


class FaultRow(NamedTuple):
    """A row of the fault table (the fields of ``bench_server.py --json``)."""

    fault: str
    runs: int
    survived: int
    lost: int
    rss_before_mb: float | None = None
    """The server's resident memory before the abuse (None: not a server process)."""
    rss_after_mb: float | None = None


def fault_table(rows: list[FaultRow], outcomes: list[Outcome]) -> list[str]:
    lines = ["| fault | runs | survived | data lost | server RSS before → after (MB) | "
             "caught by (protection removed → failing test) |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        by = [f"`{o.protection.name}` → " + (", ".join(dict.fromkeys(
            f"`{_short(n)}`" for n in o.run.failed)) if o.caught else "**not caught**")
            for o in outcomes if r.fault in o.protection.faults]
        rss = ("—" if r.rss_before_mb is None else
               f"{r.rss_before_mb:.0f} → {r.rss_after_mb:.0f}")
        lines.append(f"| {r.fault} | {r.runs} | {r.survived} | {r.lost} | {rss} | "
                     f"{'; '.join(by) or '—'} |")
    return lines


def _baseline_rows(table: Path) -> list[FaultRow]:
    """The rows test_faults wrote to ``$SAE_MED_FAULT_TABLE`` (a Markdown table)."""
    rows = []
    for line in table.read_text().splitlines()[2:]:
        fault, runs, survived, lost = (c.strip() for c in line.strip("|").split("|"))
        rows.append(FaultRow(fault, int(runs), int(survived), int(lost)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="protections to check (default: all)")
    ap.add_argument("--list", action="store_true", help="list the protections and exit")
    ap.add_argument("--worktree", action="store_true",
                    help="copy the working tree's tracked files instead of HEAD")
    ap.add_argument("--abuse", type=Path, help="bench_server.py --json rows to append")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per test")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = ap.parse_args(argv)
    known = {p.name: p for p in PROTECTIONS}
    if args.list:
        for p in PROTECTIONS:  # whether each patch still fits the working tree
            fits = (REPO / p.path).read_text().count(p.old) == 1
            print(f"{p.name:24} {p.path:26} {'fits' if fits else 'DOES NOT FIT':12} "
                  f"{', '.join(_short(t) for t in p.tests)}")
        return 0
    if unknown := [n for n in args.names if n not in known]:
        ap.error(f"unknown protection(s) {unknown}; --list shows them")
    chosen = [known[n] for n in args.names] or list(PROTECTIONS)
    root = scratch_copy(args.worktree)
    print(f"scratch copy: {root} ({'working tree' if args.worktree else 'HEAD'})", flush=True)
    try:
        return check(root, chosen, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def check(root: Path, chosen: list[Protection], args: argparse.Namespace) -> int:
    """The baseline, then every chosen patch, in the copy at ``root``; printed tables."""
    check_imports_from(root)
    # all of them: the whole fault module, for its table; some: just their tests
    nodes = list(dict.fromkeys(t for p in chosen for t in p.tests))
    if not args.names:
        nodes = [FAULTS, *(t for t in nodes if not t.startswith(FAULTS))]
    base = run_tests(root, nodes, args.timeout, SAE_MED_FAULT_TABLE=str(root / "faults.md"))
    print(f"baseline (nothing removed): {base.passed} passed, {len(base.failed)} failed in "
          f"{base.seconds:.0f} s", flush=True)
    if base.returncode != 0:
        sys.exit(f"the unpatched copy fails {list(base.failed)}; fix that first\n{base.tail}")
    outcomes = []
    for p in chosen:
        outcomes.append(o := mutate(root, p, args.timeout))
        print(f"{p.name}: {'caught by ' + ', '.join(o.run.failed) if o.caught else 'NOT CAUGHT'}"
              f" ({o.run.seconds:.0f} s)", flush=True)
    rows = _baseline_rows(root / "faults.md") if not args.names else []
    if args.abuse:
        rows += [FaultRow(**r) for r in json.loads(args.abuse.read_text())]
    print("\n" + "\n".join(protection_table(outcomes)))
    if rows:
        print("\n" + "\n".join(fault_table(rows, outcomes)))
    uncaught = sum(not o.caught for o in outcomes)
    print(f"uncaught={uncaught}")
    return int(uncaught > 0)


if __name__ == "__main__":
    sys.exit(main())
