"""Rerunning one notebook: parameters checked by name and type against its parameters cell,
papermill's string forms read, and a tiny notebook executed by `sae-med notebook` and by
plain papermill on its jupytext-paired .ipynb."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sae_med.cli import main
from sae_med.config import load_config
from sae_med.report.book import PROJECT_ROOT
from sae_med.report.parameters import (
    NotebookParameterError,
    check_injected_parameters,
    notebook_config,
    notebook_parameters,
)
from sae_med.report.rerun import check_parameters, find_notebook, pair_notebooks, run_notebook

NOTEBOOKS = PROJECT_ROOT / "notebooks"
SMOKE = str(PROJECT_ROOT / "configs" / "smoke.yaml")
TINY = '''# %% tags=["parameters"]
config = "configs/smoke.yaml"
overrides = []
run_name = ""
scale = 1.0

# %%
from sae_med.report.parameters import notebook_config

cfg = notebook_config(config, overrides, run_name)
print(f"name={cfg.name} lr={cfg.train.lr} scale={scale * 2}")
'''


def test_papermill_string_overrides_are_read_and_wrong_types_refused():
    assert notebook_parameters("c.yaml", '["train.lr=2e-3", "name=x"]', 7) == (
        "c.yaml", ["train.lr=2e-3", "name=x"], "7")
    assert notebook_parameters("c.yaml", "train.lr=2e-3 name=x").overrides == [
        "train.lr=2e-3", "name=x"]
    assert notebook_parameters("c.yaml", "").overrides == []
    for bad in ({"config": 5}, {"overrides": 3}, {"overrides": ["train.lr"]},
                {"run_name": ["a"]}):
        with pytest.raises(NotebookParameterError, match=next(iter(bad))):
            notebook_parameters(**{"config": "c.yaml", **bad})


def test_notebooks_are_found_by_number_or_name():
    assert find_notebook("3", NOTEBOOKS).name == "03_fidelity.py"
    assert find_notebook("03_fidelity", NOTEBOOKS) == find_notebook("03", NOTEBOOKS)
    with pytest.raises(NotebookParameterError, match="01_cache_activations"):
        find_notebook("99", NOTEBOOKS)


def test_parameters_are_checked_against_the_notebooks_cell():
    nb = find_notebook("05", NOTEBOOKS)
    assert check_parameters(nb, {"l0_target": 8, "min_docs": 3}) == {"l0_target": 8.0,
                                                                      "min_docs": 3}
    with pytest.raises(NotebookParameterError, match="no parameter 'min_doc'.*min_docs"):
        check_parameters(nb, {"min_doc": 3})
    with pytest.raises(NotebookParameterError, match="'min_docs' must be int"):
        check_parameters(nb, {"min_docs": "three"})


def test_cli_errors_are_one_line(capsys):
    assert main(["notebook", "05", SMOKE, "-p", "min_doc", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no parameter 'min_doc'" in err


def _outputs(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "".join(o.get("text", "") if isinstance(o.get("text"), str) else
                   "".join(o.get("text", [])) for c in nb["cells"] for o in c.get("outputs", []))


def test_one_notebook_runs_through_the_cli_and_through_plain_papermill(tmp_path, capsys,
                                                                      monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    (nbdir / "01_tiny.py").write_text(TINY)
    out = run_notebook("01", SMOKE, ["train.lr=0.002"], tmp_path / "a.ipynb", "tiny",
                       {"scale": 2}, notebooks_dir=nbdir)
    assert "name=tiny lr=0.002 scale=4.0" in _outputs(out)
    with pytest.raises(NotebookParameterError, match="'scale' must be float"):
        run_notebook("01", SMOKE, notebooks_dir=nbdir, extra={"scale": "big"})
    # plain papermill on the paired .ipynb, overrides as papermill's -p passes them
    paired = pair_notebooks(nbdir)
    assert paired == [nbdir / "01_tiny.ipynb"]
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "papermill"), str(paired[0]), "b.ipynb",
         "-k", "sae-med", "-p", "config", SMOKE, "-p", "overrides", '["train.lr=3e-3"]',
         "--no-progress-bar"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "name=smoke lr=0.003 scale=2.0" in _outputs(tmp_path / "b.ipynb")
    # a bad value: the cell's error is one line naming the parameter (papermill prints
    # the kernel's traceback whole after its own call stack)
    bad = subprocess.run(
        [str(Path(sys.executable).parent / "papermill"), str(paired[0]), "c.ipynb",
         "-k", "sae-med", "-p", "config", SMOKE, "-p", "overrides", '["train.lr=fast"]',
         "--no-progress-bar"], capture_output=True, text=True)
    assert bad.returncode != 0
    cell_error = bad.stderr.split('Exception encountered at "In [', 1)[1]
    assert cell_error.strip().splitlines()[1:] == [
        "NotebookParameterError: notebook parameter 'overrides': config field 'train.lr': "
        "expected float, got str 'fast'"]
    [error] = [o for c in json.loads((tmp_path / "c.ipynb").read_text())["cells"]
               for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(error["traceback"]) == 1 and error["ename"] == "NotebookParameterError"


def test_injected_parameters_are_checked_against_the_cell_run_before_them():
    declared = 'config = "c.yaml"\noverrides = []\nwidth = 128\nl0_target = 2.0\nname = "x"\n'

    def history(injected: str) -> list[str]:
        return ["import x", declared, "# Parameters\n" + injected, "cfg = setup()"]

    assert check_injected_parameters(history('width = 64\nl0_target = 8\n'
                                             'overrides = "train.lr=1"\n')) == {
        "width": 64, "l0_target": 8.0}
    assert check_injected_parameters(["import x", declared]) == {}
    assert check_injected_parameters(history("l0_target = float('nan')\n")) == {}
    for injected, message in (
            ('width = "wide"\n', r"'width' must be int \(default 128\), got str 'wide' "
                                 r"\(papermill: -p width 128\)"),
            ("name = 3\n", r"'name' must be str .*papermill: -r name TEXT"),
            ("widht = 3\n", "no parameter 'widht'; its parameters: config, overrides, width")):
        with pytest.raises(NotebookParameterError, match=message):
            check_injected_parameters(history(injected))


def test_plain_papermill_error_on_a_real_notebook_is_one_line_naming_it(tmp_path):
    """Chapter 0 (it fails at its first compute cell, before any work) through plain
    papermill with a value of the wrong type for one of its own parameters."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    (nbdir / "00_synthetic.py").write_text((NOTEBOOKS / "00_synthetic.py").read_text())
    [paired] = pair_notebooks(nbdir)
    bad = subprocess.run(
        [str(Path(sys.executable).parent / "papermill"), str(paired), "out.ipynb", "-k",
         "sae-med", "-p", "config", SMOKE, "-p", "n_features", "many", "--no-progress-bar"],
        capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0
    # papermill's own call stack comes first; the cell's error after it is one line
    cell_error = bad.stderr.split('Exception encountered at "In [', 1)[1]
    assert cell_error.strip().splitlines()[1:] == [
        "NotebookParameterError: notebook parameter 'n_features' must be int (default 48), "
        "got str 'many' (papermill: -p n_features 48)"]
    [error] = [o for c in json.loads((tmp_path / "out.ipynb").read_text())["cells"]
               for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert len(error["traceback"]) == 1 and "'n_features'" in error["evalue"]


def test_a_bad_config_is_blamed_on_the_parameter_that_breaks_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: fast}\n")
    for args, name in (((str(bad), []), "config"), ((SMOKE, ["train.lr=fast"]), "overrides"),
                       ((SMOKE, ["train.lrr=1"]), "overrides")):
        with pytest.raises(NotebookParameterError, match=f"^notebook parameter '{name}': "):
            notebook_config(*args)


def _glued(path: Path) -> dict[str, str]:
    """The text each ``glue`` call of an executed notebook recorded, by name."""
    nb = json.loads(path.read_text())
    return {o["metadata"]["scrapbook"]["name"]: o["data"].get(
                "application/papermill.record/text/plain")
            for c in nb["cells"] for o in c.get("outputs", [])
            if "scrapbook" in o.get("metadata", {})}


def test_domain_chapter_glues_its_verdict_sentence(tmp_path):
    """Chapter 9 on a synthetic run and domains run (home advantages planted, no model):
    it executes, and the sentence it glues is the one the package computes from the same
    files."""
    import ast

    from synthetic_runs import write_synthetic_results

    from sae_med.measure.results import load_comparisons
    from sae_med.report.domain_report import MixedCorpus, load_domains_run, page_verdicts

    smoke, domains = load_config(SMOKE), load_config(PROJECT_ROOT / "configs" / "domains.yaml")
    run = write_synthetic_results(tmp_path / "run" / "results.json", smoke, {
        ("medical", "medical"): 0.10, ("broad", "broad"): 0.02, ("mixed_10", "medical"): 0.05})
    dom = write_synthetic_results(tmp_path / "domains" / "results.json", domains, {
        ("medical", "medical"): 0.10, ("broad", "broad"): 0.02, ("go", "go"): 0.10})
    rand = write_synthetic_results(  # the random-weights control: medicine's gap mostly gone
        tmp_path / "random" / "results.json",
        load_config(PROJECT_ROOT / "configs" / "random_weights.yaml"),
        {("medical", "medical"): 0.02, ("broad", "broad"): 0.02},
        loss=(4.0, 12.0))  # a model that predicts: the loss gate lets ΔCE be judged
    out = run_notebook("09", SMOKE, out=tmp_path / "09.ipynb",
                       extra={"results_file": str(run), "domains_results": str(dom),
                              "random_results": str(rand)})
    glued = {k: ast.literal_eval(v) for k, v in _glued(out).items()
             if v and v[0] in "'\""}  # the strings (tables are glued as HTML too)
    expected = page_verdicts(load_comparisons(run), "medical", "broad",
                             [MixedCorpus("mixed_10", 0.1)], load_domains_run(dom).run.comparisons,
                             ["go", "foldoc"], ["wordnet", "austen"])
    assert glued["domain_verdict_sentence"] == expected["domain_verdict_sentence"]
    assert "go (biology) beats the broad SAE at home by 0.100 [" in glued[
        "domain_verdict_sentence"]
    assert glued["verdict_did_fve_typical"] == "supported"
    assert glued["verdict_placebo_fve_typical"].startswith("go: not supported; foldoc: ")
    assert glued["verdict_random_fve_typical"].startswith("smaller without training (ratio 0.2")
    # the chapter hands the loss gate the random model's vocabulary (Gemma-3-270M's, 12.48
    # nats for a uniform guess), so ΔCE is judged as FVE is
    assert glued["verdict_random_delta_ce"].startswith("smaller without training (ratio 0.")
    page = (PROJECT_ROOT / "book" / "results.md").read_text()
    quoted = set(re.findall(r"09_domain_or_home_field\.ipynb::(\w+)", page)) | set(
        re.findall(r"```\{glue:\} (\w+)\n:doc: \.\./notebooks/09_", page))
    assert len(quoted) >= 17 and quoted <= set(_glued(out))  # the page's keys all glued
