"""The shell commands the README and the book's "Using it" chapters document, for the tests
that run them. Each fenced block is classified by the HTML comment on the line before it:

    <!-- docs-test: run -->            run every command as written
    <!-- docs-test: run smoke -->      ... with configs/default.yaml (and long.yaml, the
                                       default plus its curve) -> configs/smoke.yaml
                                       (and runs/default -> runs/smoke)
    <!-- docs-test: skip REASON -->    not run (GPU, internet, a server...): REASON says why
    <!-- docs-test: file NAME -->      the block is a file the commands use (written as NAME)
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import NamedTuple

import yaml

MARKER = re.compile(r"<!--\s*docs-test:\s*(run smoke|run|skip|file)\b\s*(.*?)\s*-->")
# any fence opens a block (MyST directives such as ```{literalinclude} too), so its closing
# fence is never read as the opening of another
FENCE = re.compile(r"^```(\S*)")
SMOKE = (("configs/default.yaml", "configs/smoke.yaml"),
         ("configs/long.yaml", "configs/smoke.yaml"), ("runs/default", "runs/smoke"))


class Block(NamedTuple):
    path: Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    action: str
    """``run``, ``run smoke``, ``skip``, ``file`` or empty (unmarked)."""
    detail: str
    """The skip reason or the file name."""
    body: str


def doc_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with its docs-test marker."""
    lines = Path(path).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.search(lines[i - 1]) if i else None
        out.append(Block(Path(path), i + 1, m.group(1), marker.group(1) if marker else "",
                         marker.group(2) if marker else "", "\n".join(lines[i + 1:end])))
        i = end + 1
    return out


def using_it_chapters(root: Path) -> list[Path]:
    """The Markdown pages of the book's "Using it" part (from ``_toc.yml``)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    part = next(p for p in toc["parts"] if p["caption"] == "Using it")
    return [root / f"{c['file']}.md" for c in part["chapters"]]


def commands(block: Block) -> list[str]:
    """The block's commands: continuation lines joined, comments and blanks dropped, and
    for ``run smoke`` the default config and run folder swapped for the smoke ones."""
    joined = re.sub(r"\\\n\s*", " ", block.body)
    cmds = [ln.strip() for ln in joined.splitlines()
            if ln.strip() and not ln.strip().startswith("#")]
    if block.action == "run smoke":
        for full, smoke in SMOKE:
            cmds = [c.replace(full, smoke) for c in cmds]
    return cmds


def run_command(cmd: str, cwd: Path, root: Path, timeout: float = 1800) -> str:
    """Run ``cmd`` with bash in ``cwd`` (this checkout's package first on the path); its
    output, or an AssertionError holding the command and the output's tail."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"`{cmd}` exited {proc.returncode}:\n{out[-4000:]}"
    return out


def checkout(root: Path, where: Path) -> Path:
    """A folder that looks like a fresh checkout of ``root`` for the documented commands:
    links to its configs, notebooks, Makefile and .venv; ``runs/`` is shared with the
    checkout (so the smoke run other tests train is reused), everything else is new."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "notebooks", "Makefile", ".venv", "scripts", "runs"):
        (root / name).mkdir(exist_ok=True) if name == "runs" else None
        link = where / name
        if not link.exists():
            link.symlink_to(root / name)
    return where
