"""Publishing the built book into a local bare repository's gh-pages branch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sae_med.cli import main
from sae_med.report.publish import PublishError, git_identity, html_dir, publish_html


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


USER = "Ada Lovelace <ada@example.org>"


@pytest.fixture(autouse=True)
def git_user(tmp_path, monkeypatch) -> Path:
    """A global git config of our own, naming :data:`USER`, whatever the machine has."""
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Ada Lovelace\n\temail = ada@example.org\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("NAME", "EMAIL"):
        for who in ("AUTHOR", "COMMITTER"):
            monkeypatch.delenv(f"GIT_{who}_{var}", raising=False)
    monkeypatch.chdir(tmp_path)  # outside any repository with a config of its own
    return config


@pytest.fixture
def site(tmp_path) -> Path:
    """A built book as `sae-med book` lays it out: {build}/{run}/_build/html."""
    html = tmp_path / "build" / "smoke" / "_build" / "html"
    (html / "_static").mkdir(parents=True)
    (html / "index.html").write_text("<html>smoke book</html>")
    (html / "_static" / "style.css").write_text("body {}")
    return html


@pytest.fixture
def remote(tmp_path) -> Path:
    repo = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--bare", "-q", str(repo)], check=True)
    return repo


def test_publish_commits_the_html_on_top_of_the_branch(site, remote):
    first = publish_html(site.parents[2], str(remote))  # found under the build folder
    assert first.changed and first.n_files == 3
    assert _git(remote, "rev-parse", "refs/heads/gh-pages") == first.commit
    files = _git(remote, "ls-tree", "-r", "--name-only", "gh-pages").splitlines()
    assert sorted(files) == [".nojekyll", "_static/style.css", "index.html"]
    assert _git(remote, "show", "gh-pages:index.html") == "<html>smoke book</html>"

    again = publish_html(site, str(remote))  # the same tree: nothing new to push
    assert not again.changed and again.commit == first.commit

    (site / "index.html").write_text("<html>second build</html>")
    (site / "_static" / "style.css").unlink()
    second = publish_html(site, str(remote), message="book for abc123")
    assert second.changed and _git(remote, "rev-parse", "gh-pages^") == first.commit
    assert _git(remote, "log", "-1", "--format=%s", "gh-pages") == "book for abc123"
    files = _git(remote, "ls-tree", "-r", "--name-only", "gh-pages").splitlines()
    assert sorted(files) == [".nojekyll", "index.html"]  # a removed file is gone


def test_publish_leaves_other_branches_alone(site, remote, tmp_path):
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(remote), str(work)], check=True)
    (work / "README.md").write_text("source")
    for args in (["add", "README.md"], ["-c", "user.name=t", "-c", "user.email=t@t",
                                        "commit", "-qm", "source"], ["push", "-q", "origin",
                                                                     "HEAD:refs/heads/main"]):
        subprocess.run(["git", "-C", str(work), *args], check=True)
    main_before = _git(remote, "rev-parse", "refs/heads/main")
    publish_html(site, str(remote))
    assert _git(remote, "rev-parse", "refs/heads/main") == main_before
    assert not (work / "index.html").exists()


def test_publish_errors_say_what_to_do(tmp_path, site):
    with pytest.raises(PublishError, match="run `sae-med book CONFIG` first"):
        html_dir(tmp_path / "nothing")
    other = tmp_path / "build" / "other" / "_build" / "html"
    other.mkdir(parents=True)
    (other / "index.html").write_text("x")
    with pytest.raises(PublishError, match="several built books"):
        html_dir(tmp_path / "build")
    with pytest.raises(PublishError, match="git ls-remote failed"):
        publish_html(site, str(tmp_path / "no-such-remote.git"))


def test_cli_publish(site, remote, capsys, tmp_path):
    assert main(["publish", str(site), "--remote", str(remote)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"published=gh-pages@{_git(remote, 'rev-parse', 'gh-pages')}"
    assert main(["publish", str(tmp_path / "nothing"), "--remote", str(remote)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sae-med book" in err


def test_publish_commits_as_the_users_git_identity(site, remote):
    publish_html(site, str(remote))
    assert _git(remote, "log", "-1", "--format=%an <%ae>", "gh-pages") == USER
    assert _git(remote, "log", "-1", "--format=%cn <%ce>", "gh-pages") == USER


def test_publish_without_a_git_identity_says_how_to_set_one(site, remote, git_user):
    git_user.write_text("[user]\n\tuseConfigOnly = true\n")  # no guessing from the host
    with pytest.raises(PublishError, match="git config --global user.name"):
        git_identity()
    with pytest.raises(PublishError, match="no identity"):
        publish_html(site, str(remote))
    assert not _git(remote, "for-each-ref")  # nothing pushed
