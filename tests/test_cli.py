"""The sae-med command line: config errors name the field, corpora lists every corpus,
--version, -v anywhere, config prints what it resolved."""

from __future__ import annotations

import json

import pytest

from sae_med import __version__
from sae_med.cli import main, parse_args
from sae_med.config import load_config


def test_config_error_names_the_field(capsys):
    rc = main(["cache", "configs/smoke.yaml", "cache.n_tokenz=5"])
    assert rc == 2
    assert "cache.n_tokenz" in capsys.readouterr().err


def test_corpora_lists_every_corpus(capsys):
    from sae_med.corpora.registry import list_corpora

    assert main(["corpora", "--no-tokens"]) == 0
    out = capsys.readouterr().out
    for name in list_corpora():
        assert any(line.startswith(name + " ") for line in out.splitlines())


def test_corpora_leakage_prints_one_row_per_report(capsys, monkeypatch):
    from sae_med.corpora import leakage
    from sae_med.corpora.registry import Removed

    rows = [leakage.Leakage("hpo", 900, 100, 0.0, 0.005, Removed(7, 3)),
            leakage.Leakage("web", 90, 10, 0.1, 0.2)]
    monkeypatch.setattr(leakage, "offline_leakage", lambda: rows)
    assert main(["corpora", "--leakage"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["hpo", "900", "100", "0.00%", "0.50%", "7", "3"]
    assert lines[2].split() == ["web", "90", "10", "10.00%", "20.00%", "-", "-"]


def test_evaluate_external_sae_errors_say_what_to_pass(capsys, tmp_path):
    rc = main(["evaluate", "configs/smoke.yaml", "--sae", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert rc == 2 and "no such file" in err and "sae_lens:RELEASE/SAE_ID" in err
    rc = main(["evaluate", "configs/smoke.yaml", "--sae", str(tmp_path), "--sae-id", "a",
               "--sae-id", "b"])
    assert rc == 2 and "--sae-id" in capsys.readouterr().err


def test_version_and_verbose_after_the_subcommand(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sae-med {__version__}"
    assert parse_args(["-v", "train", "c.yaml"]).verbose
    args = parse_args(["train", "c.yaml", "a=1", "-v", "b=2"])
    assert args.verbose and args.overrides == ["a=1", "b=2"]
    assert not parse_args(["train", "c.yaml"]).verbose
    with pytest.raises(SystemExit):
        parse_args(["train", "c.yaml", "-v", "--nope"])


def test_config_prints_the_resolved_config_that_loads_back(capsys, tmp_path):
    args = ["configs/wordnet_control.yaml", "train.lr=0.002"]
    assert main(["config", *args]) == 0
    printed = tmp_path / "resolved.yaml"
    printed.write_text(capsys.readouterr().out)
    assert load_config(printed) == load_config(*args[:1], args[1:])
    assert main(["config", *args, "--json"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["train"]["lr"] == 0.002 and resolved["train_corpora"][1] == "wordnet"


def test_an_override_split_by_the_shell_says_how_to_quote_it(capsys):
    """`train_corpora=[medical, broad]` typed unquoted reaches us as two arguments."""
    assert main(["config", "configs/smoke.yaml", "train_corpora=[medical,", "broad]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not valid YAML" in err
    assert "must be quoted in the shell" in err and "Traceback" not in err
