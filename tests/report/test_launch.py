"""Opening a chapter yourself: the repository the launch links name, the install cell every
executed notebook starts with (a no-op where sae_med imports, a clone + install where it
does not, harmless under papermill), the launch config and Binder's environment."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from sae_med.report import launch
from sae_med.report.book import LAUNCH_URLS, PROJECT_ROOT, write_build_info


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_repository_from_actions_then_from_the_origin_remote(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_REPOSITORY", "someone/sae-med")
    assert launch.book_repository(tmp_path) == "https://github.com/someone/sae-med"
    monkeypatch.delenv("GITHUB_REPOSITORY")
    assert launch.book_repository(tmp_path) == ""  # not a checkout
    _git(tmp_path, "init", "-q")
    assert launch.book_repository(tmp_path) == ""  # no origin
    _git(tmp_path, "remote", "add", "origin", "/elsewhere/sae-med")
    assert launch.book_repository(tmp_path) == ""  # a local path: no launch service sees it
    for remote in ("git@github.com:someone/sae-med.git", "https://github.com/someone/sae-med",
                   "ssh://git@github.com/someone/sae-med.git"):
        _git(tmp_path, "remote", "set-url", "origin", remote)
        assert launch.book_repository(tmp_path) == "https://github.com/someone/sae-med", remote


def test_install_ref_is_the_books_commit():
    assert launch.commit_ref("0123456789ab (with uncommitted changes)") == "0123456789ab"
    assert launch.commit_ref("unknown (not a git checkout)") == "HEAD"


def _with_install_cell(tmp_path, repository="https://github.com/someone/sae-med"):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 1. A chapter"),
                                         nbformat.v4.new_code_cell("x = 1")])
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    launch.add_install_cell(path, repository, "0123456789ab")
    return nbformat.read(path, as_version=4)


def test_install_cell_comes_first_and_does_nothing_where_sae_med_imports(tmp_path,
                                                                          monkeypatch):
    nb = _with_install_cell(tmp_path)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert launch.INSTALL_TAG in first.metadata.tags and nb.cells[2].source == "x = 1"

    def refuse(*args, **kwargs):
        raise AssertionError(f"the install cell ran {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    exec(first.source, {})
    assert list(sys.path) == path_before and importlib.util.find_spec("sae_med")


def test_install_cell_clones_the_books_commit_and_installs_where_sae_med_is_missing(
        tmp_path, monkeypatch):
    first = next(c for c in _with_install_cell(tmp_path).cells if c.cell_type == "code")
    ran = []

    def fake_run(cmd, check):
        ran.append(cmd)
        if cmd[:2] == ["git", "clone"]:
            (tmp_path / "home" / "sae-med").mkdir(parents=True)

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "sae_med" else find_spec(name, *a))
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(first.source, {})
    clone = str(tmp_path / "home" / "sae-med")
    assert ran == [["git", "clone", "-q", "https://github.com/someone/sae-med", clone],
                   ["git", "-C", clone, "checkout", "-q", "0123456789ab"],
                   [sys.executable, "-m", "pip", "install", "-q", "-e", clone]]
    assert sys.path[0] == clone and Path.cwd() == Path(clone)
    with pytest.raises(RuntimeError, match="names no repository"):
        exec(next(c for c in _with_install_cell(tmp_path, "").cells
                  if c.cell_type == "code").source, {})


def test_a_notebook_holding_the_install_cell_runs_under_papermill(tmp_path):
    """A downloaded notebook rerun where sae-med is installed: the cell passes, and the
    notebook's working directory is left alone."""
    from sae_med.report.book import ensure_kernel, execute_notebook

    cell = launch.INSTALL_CELL.format(repository="https://github.com/someone/sae-med",
                                      ref="HEAD")
    source = tmp_path / "01_installed.py"
    source.write_text('# %% tags=["parameters"]\nconfig = ""\noverrides = []\n'
                      'run_name = ""\n\n# %%\n' + cell + "\n# %%\nimport os\n\nimport sae_med\n"
                      "print(os.getcwd())\n")
    out = execute_notebook(source, tmp_path / "01_installed.ipynb", {}, ensure_kernel(),
                           tmp_path)
    printed = [o.text for c in nbformat.read(out, as_version=4).cells
               for o in c.get("outputs", []) if o.get("name") == "stdout"]
    assert printed == [f"{tmp_path}\n"]


def test_launch_links_need_a_repository(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text((PROJECT_ROOT / "_config.yml").read_text())
    write_build_info(config, {"book_commit": "x"}, "https://github.com/someone/sae-med")
    book = yaml.safe_load(config.read_text())
    assert book["repository"]["url"] == "https://github.com/someone/sae-med"
    assert book["launch_buttons"]["colab_url"] and book["launch_buttons"]["binderhub_url"]
    write_build_info(config, {"book_commit": "x"})
    book = yaml.safe_load(config.read_text())
    assert not any(book["launch_buttons"][key] for key in LAUNCH_URLS)


def test_binder_environment_is_the_pinned_requirements(tmp_path):
    target = launch.write_binder(tmp_path, PROJECT_ROOT)
    for name in launch.BINDER_FILES:
        assert (target / name).read_bytes() == (PROJECT_ROOT / name).read_bytes()
    post_build = (target / "postBuild").read_text()
    assert "requirements-data.txt" in post_build and "--name sae-med" in post_build
