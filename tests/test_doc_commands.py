"""The commands the README and the book's "Using it" chapters document: every shell block
is marked (run, or skipped with a reason), every sae-med command in them parses and names
a config that loads, and (slow) the README's runnable blocks run at smoke size in a fresh
checkout (book/new_domain.md's run in tests/e2e/test_new_domain.py)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from doc_commands import checkout, commands, doc_blocks, run_command, using_it_chapters

from sae_med.cli import parse_args
from sae_med.config import load_config
from sae_med.report.book import PROJECT_ROOT

DOCS = [PROJECT_ROOT / "README.md", *using_it_chapters(PROJECT_ROOT)]
SHELL = ("bash", "sh", "console", "shell")


def _shell_blocks():
    return [b for path in DOCS for b in doc_blocks(path) if b.lang in SHELL]


def test_every_shell_block_is_marked_and_skips_say_why():
    blocks = _shell_blocks()
    assert len(blocks) > 10
    for b in blocks:
        where = f"{b.path.name}:{b.line}"
        assert b.action in ("run", "run smoke", "skip"), (
            f"{where}: mark the block <!-- docs-test: run --> (or 'run smoke', or "
            "'skip REASON') on the line before it")
        assert b.action != "skip" or len(b.detail) > 10, f"{where}: say why it is skipped"
    assert {b.action for b in blocks if b.path.name == "README.md"} >= {"run", "run smoke"}


def _sae_med_argv(cmd: str) -> list[str] | None:
    """The arguments after ``sae-med`` / ``-m sae_med.cli`` in a command, else None."""
    words = shlex.split(cmd, comments=True)
    for i, w in enumerate(words):
        if w.endswith("bin/sae-med") or (i == 0 and w == "sae-med") or (
                w == "sae_med.cli" and words[i - 1] == "-m"):
            rest = words[i + 1:]
            ends = [j for j, r in enumerate(rest) if r in ("&", "&&", ";", "|", "||")]
            return rest[:ends[0]] if ends else rest
    return None


def test_every_documented_sae_med_command_parses_and_its_config_loads():
    """Skipped blocks too: a renamed flag or config file fails here, GPU or not."""
    seen = 0
    for b in _shell_blocks():
        for cmd in commands(b):
            argv = _sae_med_argv(cmd)
            if argv is None:
                continue
            seen += 1
            args = parse_args(argv)
            config = getattr(args, "config", None)
            if config and config.startswith("configs/"):
                load_config(PROJECT_ROOT / config, getattr(args, "overrides", []))
    assert seen > 20


def test_no_block_rebuilds_the_book_a_run_just_built():
    """`sae-med run` ends by building the book; a `sae-med book` with the same arguments
    after it executes every notebook a second time."""
    for b in _shell_blocks():
        ran: set[tuple[str, ...]] = set()
        for cmd in commands(b):
            argv = _sae_med_argv(cmd) or [""]
            assert not (argv[0] == "book" and tuple(argv[1:]) in ran), (
                f"{b.path.name}:{b.line}: `{cmd}` repeats the book `sae-med run` built")
            if argv[0] == "run":
                ran.add(tuple(argv[1:]))


@pytest.fixture(scope="module")
def fresh_checkout(tmp_path_factory) -> Path:
    return checkout(PROJECT_ROOT, tmp_path_factory.mktemp("checkout"))


def test_readme_commands_run_at_smoke_size(fresh_checkout):
    """Every command of the README's runnable blocks, as written (smoke configs)."""
    ran = []
    for b in doc_blocks(PROJECT_ROOT / "README.md"):
        if b.action.startswith("run"):
            for cmd in commands(b):
                run_command(cmd, fresh_checkout, PROJECT_ROOT)
                ran.append(cmd)
    assert any("sae-med notebook 03" in c for c in ran)
    executed = json.loads((fresh_checkout / "03_out.ipynb").read_text())
    injected = [c for c in executed["cells"]
                if "injected-parameters" in c["metadata"].get("tags", [])]
    assert "eval.ce_docs=8" in "".join(injected[0]["source"])
    assert (fresh_checkout / "runs" / "smoke" / "notebooks" / "03_fidelity.ipynb").exists()
    assert (fresh_checkout / "exported" / "README.md").exists()
