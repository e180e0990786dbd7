"""Publish a built book: commit its HTML to a branch (``gh-pages``) of a git remote.

What ``ghp-import -n -p`` does, with plain git and without touching any checkout: the
folder is committed from a throwaway bare repository with its own index, on top of the
remote branch's last commit (so the branch keeps its history), with a ``.nojekyll`` file
(GitHub Pages would otherwise hide Sphinx's ``_static/``), then pushed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

DEFAULT_BRANCH = "gh-pages"


class PublishError(RuntimeError):
    """The book cannot be published; the message says what to do."""


class Published(NamedTuple):
    commit: str
    """The branch's commit after publishing (the previous one when nothing changed)."""
    branch: str
    n_files: int
    """Files in the published tree (``.nojekyll`` included)."""
    changed: bool
    """False when the remote branch already held exactly this tree (nothing pushed)."""


def html_dir(build: str | Path) -> Path:
    """The folder holding ``index.html``: ``build`` itself, or the book build under it
    (``{build_dir}/{run}/_build/html`` from ``sae-med book``)."""
    build = Path(build)
    if (build / "index.html").is_file():
        return build
    found = sorted(build.glob("**/_build/html/index.html")) if build.is_dir() else []
    if len(found) == 1:
        return found[0].parent
    if len(found) > 1:
        raise PublishError(f"{build} holds several built books "
                           f"({', '.join(str(f.parent) for f in found)}); pass one of them")
    raise PublishError(f"{build}: no built book (index.html) here; run `sae-med book CONFIG` "
                       "first and pass the folder it prints (book=.../index.html)")


def _git(repo: Path, *args: str, index: Path | None = None, work_tree: Path | None = None,
         stdin: str | None = None) -> str:
    env = {**os.environ, "GIT_DIR": str(repo)}
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    if work_tree is not None:
        env["GIT_WORK_TREE"] = str(work_tree)
    # an identity for the commit when the user has none configured (CI machines)
    for var, value in (("GIT_AUTHOR_NAME", "sae-med"), ("GIT_COMMITTER_NAME", "sae-med"),
                       ("GIT_AUTHOR_EMAIL", "sae-med@localhost"),
                       ("GIT_COMMITTER_EMAIL", "sae-med@localhost")):
        env.setdefault(var, value)
    proc = subprocess.run(["git", *args], env=env, input=stdin, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PublishError(f"git {args[0]} failed: {detail}")
    return proc.stdout.strip()


def publish_html(build: str | Path, remote: str, branch: str = DEFAULT_BRANCH,
                 message: str = "") -> Published:
    """Commit the built book under ``build`` (see :func:`html_dir`) as the whole tree of
    ``branch`` on ``remote`` (a URL or path), on top of that branch's history."""
    site = html_dir(build)
    ref = f"refs/heads/{branch}"
    with tempfile.TemporaryDirectory(prefix="sae-med-publish-") as tmp:
        repo, index = Path(tmp) / "repo.git", Path(tmp) / "index"
        _git(repo, "init", "--bare", "-q")
        parent = ""
        if _git(repo, "ls-remote", "--heads", remote, ref):
            _git(repo, "fetch", "-q", "--depth=1", remote, f"+{ref}:{ref}")
            parent = _git(repo, "rev-parse", ref)
        _git(repo, "add", "-A", "--force", ".", index=index, work_tree=site)
        empty = _git(repo, "hash-object", "-w", "--stdin", stdin="")
        _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{empty},.nojekyll",
             index=index)
        tree = _git(repo, "write-tree", index=index)
        n_files = len(_git(repo, "ls-tree", "-r", "--name-only", tree).splitlines())
        if parent and _git(repo, "rev-parse", f"{parent}^{{tree}}") == tree:
            log.info("%s %s already holds this book; nothing to push", remote, branch)
            return Published(parent, branch, n_files, False)
        msg = message or f"Publish the book from {site}"
        commit = _git(repo, "commit-tree", tree, *(["-p", parent] if parent else []),
                      "-m", msg)
        _git(repo, "push", "-q", remote, f"{commit}:{ref}")
    log.info("published %d files to %s %s (%s)", n_files, remote, branch, commit[:12])
    return Published(commit, branch, n_files, True)
