"""Open a chapter yourself: what the book adds so that its executed notebooks run on Colab
or Binder (the theme's launch buttons, configured in ``_config.yml``).

- :func:`book_repository`: the repository the launch buttons and the install cell name.
- :func:`add_install_cell`: a first code cell, in every executed notebook, that installs
  sae-med from that repository at the book's commit where ``sae_med`` does not import.
- :func:`write_binder`: Binder's environment in the built site (the gh-pages branch the
  Binder button opens): the project's pinned requirements and ``binder/postBuild``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

INSTALL_TAG = "install-sae-med"
"""Tag of the install cell (the book hides its source behind a toggle: ``hide-input``)."""

INSTALL_CELL = '''\
# Colab, Binder or any Jupyter without sae-med: clone the project at the commit that built
# this page, install it and work from the clone (the configs/ paths resolve there).
# Where sae_med already imports (the project's own runs), this cell does nothing.
import importlib.util

if importlib.util.find_spec("sae_med") is None:
    import os
    import subprocess
    import sys

    REPOSITORY, REF = {repository!r}, {ref!r}
    if not REPOSITORY:
        raise RuntimeError("sae_med is not installed and this book names no repository: "
                           "clone sae-med and run `pip install -e .` in the clone")
    clone = os.path.expanduser("~/sae-med")
    if not os.path.isdir(clone):
        subprocess.run(["git", "clone", "-q", REPOSITORY, clone], check=True)
        subprocess.run(["git", "-C", clone, "checkout", "-q", REF], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", clone], check=True)
    sys.path.insert(0, clone)  # an editable install is not on this kernel's path yet
    os.chdir(clone)
'''

BINDER_FILES = ("requirements.txt", "requirements-data.txt")
"""The pinned sets Binder installs (the exact set the tests ran on), copied beside
``binder/postBuild``."""


def _git_remote(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def book_repository(root: Path) -> str:
    """The project's repository as an https URL: ``$GITHUB_REPOSITORY`` (on Actions, where
    the book is published), else the checkout's ``origin`` remote, else ``""``."""
    if os.environ.get("GITHUB_REPOSITORY"):
        server = os.environ.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        return f"{server}/{os.environ['GITHUB_REPOSITORY']}"
    remote = _git_remote(root)
    ssh = re.fullmatch(r"(?:ssh://)?git@([^:/]+)[:/](.+?)(?:\.git)?/?", remote)
    if ssh:  # the launch services clone over https
        return f"https://{ssh[1]}/{ssh[2]}"
    if remote.startswith("https://"):
        return remote.removesuffix("/").removesuffix(".git")
    return ""


def commit_ref(book_commit: str) -> str:
    """The commit the install cell checks out: the hex of ``book_commit`` (as
    :func:`sae_med.report.book.source_commit` gives it), else the clone's default branch."""
    match = re.match(r"[0-9a-f]{7,40}\b", book_commit)
    return match[0] if match else "HEAD"


def add_install_cell(path: Path, repository: str, ref: str) -> None:
    """Insert :data:`INSTALL_CELL` as the first code cell of the executed notebook ``path``
    (unexecuted: the book's own run had sae_med, where it does nothing)."""
    # deferred: nbformat is needed only by the book build
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cell = nbformat.v4.new_code_cell(
        INSTALL_CELL.format(repository=repository, ref=ref),
        metadata={"tags": [INSTALL_TAG, "hide-input"]})
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"),
                      len(nb.cells))
    nb.cells.insert(first_code, cell)
    nbformat.write(nb, path)


def write_binder(html: Path, root: Path) -> Path:
    """Binder's environment at ``html/binder``: ``root/binder``'s files and the project's
    pinned requirements (:data:`BINDER_FILES`). Returns the folder."""
    target = Path(html) / "binder"
    shutil.copytree(Path(root) / "binder", target, dirs_exist_ok=True)
    for name in BINDER_FILES:
        shutil.copy2(Path(root) / name, target / name)
    return target
