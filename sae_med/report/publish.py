"""Publish a built book: commit its HTML to a branch (``gh-pages``) of a git remote.

ghp-import writes the commit (the folder as the branch's whole tree, with ``.nojekyll`` so
GitHub Pages serves Sphinx's ``_static/``) in a throwaway repository that holds only the
remote branch, so no checkout is touched; the commit carries the user's own git identity.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

DEFAULT_BRANCH = "gh-pages"
REMOTE = "origin"
"""The remote's name inside the throwaway repository."""


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


class Identity(NamedTuple):
    name: str
    email: str


def git_identity(cwd: str | Path | None = None) -> Identity:
    """The identity git would commit with here (``user.name`` / ``user.email`` from the
    repository at ``cwd``, the global config or ``GIT_COMMITTER_*``)."""
    proc = subprocess.run(["git", "var", "GIT_COMMITTER_IDENT"], cwd=cwd, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise PublishError("git has no identity to commit the book with: run git config "
                           "--global user.name 'Your Name' and git config --global "
                           "user.email you@example.org, then publish again")
    name, rest = proc.stdout.split(" <", 1)
    return Identity(name, rest.split(">", 1)[0])


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PublishError(f"git {args[0]} failed: {detail}")
    return proc.stdout.strip()


def _ghp_import(repo: Path, site: Path, branch: str, message: str, who: Identity) -> None:
    """ghp-import in ``repo``: a commit on ``branch`` (on top of ``origin/branch``, if
    fetched) whose tree is ``site`` plus ``.nojekyll``. A subprocess, since ghp-import runs
    git in the current directory."""
    env = {**os.environ, "GIT_COMMITTER_NAME": who.name, "GIT_COMMITTER_EMAIL": who.email}
    proc = subprocess.run([sys.executable, "-m", "ghp_import", "--no-jekyll", "--message",
                           message, "--branch", branch, "--remote", REMOTE, str(site)],
                          cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not _git(repo, "rev-parse", "--verify", "-q",
                                        f"refs/heads/{branch}"):
        detail = (proc.stderr.strip().splitlines() or ["no commit was written"])[-1]
        raise PublishError(f"ghp-import failed: {detail}")


def publish_html(build: str | Path, remote: str, branch: str = DEFAULT_BRANCH,
                 message: str = "") -> Published:
    """Commit the built book under ``build`` (see :func:`html_dir`) as the whole tree of
    ``branch`` on ``remote`` (a URL or path), on top of that branch's history, as the
    user's git identity (:func:`git_identity`)."""
    site = html_dir(build).resolve()
    who = git_identity()
    with tempfile.TemporaryDirectory(prefix="sae-med-publish-") as tmp:
        repo = Path(tmp) / "repo.git"
        _git(Path(tmp), "init", "--bare", "-q", str(repo))
        # a local path is relative to the caller, not to the throwaway repository
        _git(repo, "remote", "add", REMOTE,
             str(Path(remote).resolve()) if Path(remote).exists() else remote)
        parent = ""
        if _git(repo, "ls-remote", "--heads", REMOTE, f"refs/heads/{branch}"):
            _git(repo, "fetch", "-q", "--depth=1", REMOTE, branch)
            parent = _git(repo, "rev-parse", "FETCH_HEAD")
            _git(repo, "update-ref", f"refs/remotes/{REMOTE}/{branch}", parent)
        _ghp_import(repo, site, branch, message or f"Publish the book from {site}", who)
        commit = _git(repo, "rev-parse", f"refs/heads/{branch}")
        n_files = len(_git(repo, "ls-tree", "-r", "--name-only", commit).splitlines())
        trees = _git(repo, "rev-parse", f"{parent or commit}^{{tree}}", f"{commit}^{{tree}}")
        if parent and len(set(trees.split())) == 1:
            log.info("%s %s already holds this book; nothing to push", remote, branch)
            return Published(parent, branch, n_files, False)
        _git(repo, "push", "-q", REMOTE, f"refs/heads/{branch}")
    log.info("published %d files to %s %s (%s)", n_files, remote, branch, commit[:12])
    return Published(commit, branch, n_files, True)
