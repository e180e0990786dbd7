"""Corpora declared in a config: every file format and the hub route give the same
documents, with the built-in corpora's guarantees (grouped split, dedup, content-hashed
fingerprint, leakage report) and one clear error for missing files or fields."""

from __future__ import annotations

import csv
import json

import pytest

from sae_med.cli import main
from sae_med.config import Config, ConfigError, load_config
from sae_med.corpora import documents, leakage, registry
from sae_med.corpora.leakage import corpus_leakage, offline_leakage
from sae_med.corpora.local import CorpusSourceError

_WORDS = (["vendor", "tenant", "trustee", "insurer", "lessee"],
          ["breached", "waived", "assigned", "repudiated", "ratified", "rescinded"],
          ["covenant", "easement", "lease", "charge"])
RECORDS = [{"id": f"r{i}", "text": f"The {_WORDS[0][i % 5]} {_WORDS[1][i // 5 % 6]} the "
            f"{_WORDS[2][i // 30]} on appeal.", "case": f"k{i // 4}",
            "tags": ["property" if i % 2 else "contract"]} for i in range(120)]
"""120 distinct texts (no two near-duplicates), four per case (group)."""


def declared_config(overrides: list[str]) -> Config:
    """A config with its corpora handed to the registry, as a stage hands them."""
    cfg = load_config(None, overrides)
    registry.use_config(cfg)
    return cfg


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Declared corpora are parsed into a temp cache, run from a temp folder, and
    forgotten after the test (the registry is process-wide)."""
    monkeypatch.setenv("SAE_MED_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _declare(name, **spec):
    spec = {"domain": "law", "id_field": "id", "group_field": "case", "labels_field": "tags",
            **spec}
    return declared_config([f"corpora={json.dumps({name: spec})}"])


def test_declared_jsonl_corpus_splits_by_group_and_deduplicates(tmp_path):
    dup = {**RECORDS[5], "id": "copy"}  # the same text under another id: dropped
    _jsonl(tmp_path / "law" / "a.jsonl", RECORDS[:60])
    _jsonl(tmp_path / "law" / "b.jsonl", [*RECORDS[60:], dup])
    cfg = _declare("lawx", files="law/*.jsonl")
    assert cfg.corpora["lawx"].labels_field == ("tags",)
    info = registry.corpus_info("lawx")
    assert (info.kind, info.domain) == ("local", "law")
    docs = list(registry.iter_documents("lawx"))
    assert len(docs) == len(RECORDS) and "lawx:copy" not in {d.doc_id for d in docs}
    assert registry.duplicates_removed("lawx").exact == 1
    by_group: dict[str, set[str]] = {}
    for d in docs:
        by_group.setdefault(d.group, set()).add(d.split)
        assert d.split == documents.split_of(d.group)
    assert all(len(sides) == 1 for sides in by_group.values())
    assert {d.split for d in docs} == {"train", "eval"}  # 30 groups: both sides occur
    assert docs == sorted(docs, key=lambda d: documents.order_key(d.doc_id))
    first = next(d for d in docs if d.doc_id == "lawx:r1")
    assert (first.source, first.group, first.labels) == ("lawx", "lawx:k0",
                                                        {"tags": ("property",)})
    train = list(registry.iter_documents("lawx", "train"))
    assert len(train) + len(list(registry.iter_documents("lawx", "eval"))) == len(docs)
    leak = corpus_leakage("lawx")
    assert (leak.exact, leak.near, leak.removed.exact) == (0.0, 0.0, 1)

def test_offline_leakage_covers_declared_local_corpora(monkeypatch):
    _declare("lawo", files="law/*.jsonl")
    _declare("lawh", hf_dataset="someone/law")  # online: not in the offline report
    monkeypatch.setattr(leakage, "corpus_leakage", lambda name: name)
    names = offline_leakage()
    assert "lawo" in names and "medical" in names and "lawh" not in names


def test_fingerprint_follows_content_and_spec(tmp_path):
    _jsonl(tmp_path / "law" / "a.jsonl", RECORDS)
    _declare("lawf", files="law/*.jsonl")
    before = registry.corpus_fingerprint("lawf")
    assert registry.corpus_fingerprint("lawf") == before
    _jsonl(tmp_path / "law" / "a.jsonl", [*RECORDS, {**RECORDS[0], "id": "x", "text": "New."}])
    changed = registry.corpus_fingerprint("lawf")
    assert changed != before
    assert [d.doc_id for d in registry.iter_documents("lawf")].count("lawf:x") == 1
    _declare("lawf", files="law/*.jsonl", domain="broad")
    assert registry.corpus_fingerprint("lawf") not in (before, changed)


def test_every_format_and_the_hub_route_give_the_same_documents(tmp_path):
    _jsonl(tmp_path / "j" / "a.jsonl", RECORDS)
    (tmp_path / "c").mkdir()
    with open(tmp_path / "c" / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "text", "case", "tags"])
        w.writeheader()
        w.writerows({**r, "tags": r["tags"][0]} for r in RECORDS)
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p").mkdir()
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "p" / "a.parquet")
    declared = {"fj": {"files": "j/*.jsonl"}, "fc": {"files": "c/a.csv"},
                "fp": {"files": "p/*.parquet"},
                "fh": {"hf_dataset": "someone/law-cases", "data_files": "j/a.jsonl"}}
    seen = {}
    for name, spec in declared.items():
        _declare(name, **spec)
        seen[name] = {(d.doc_id.split(":", 1)[1], d.text, d.group.split(":", 1)[1],
                       d.labels["tags"]) for d in registry.iter_documents(name)}
    assert len(seen["fj"]) == len(RECORDS)
    assert seen["fc"] == seen["fj"] == seen["fp"] == seen["fh"]
    assert registry.corpus_info("fh").kind == "local"


def test_text_files_are_one_document_each_named_by_path(tmp_path):
    for i, sub in enumerate(["a", "a", "b"]):
        (tmp_path / "notes" / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / "notes" / sub / f"n{i}.txt").write_text(f"Note {i} on the easement.\n")
    declared_config(['corpora={"notes": {"files": "notes/**/*.txt", "domain": "law"}}'])
    ids = sorted(d.doc_id for d in registry.iter_documents("notes"))
    assert ids == ["notes:a/n0.txt", "notes:a/n1.txt", "notes:b/n2.txt"]


def test_a_folder_under_files_reads_what_its_glob_would(tmp_path):
    for i, sub in enumerate(["a", "a", "b"]):
        (tmp_path / "notes" / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / "notes" / sub / f"n{i}.txt").write_text(RECORDS[i * 40]["text"])
    (tmp_path / "notes" / ".DS_Store").write_bytes(b"\0\1")  # hidden: left out
    (tmp_path / "notes" / "a" / "build.log").write_text("not a document")  # no format
    docs = {}
    for name, files in (("globbed", "notes/**/*.txt"), ("folder", "notes"),
                        ("slashed", "notes/")):
        declared_config([f'corpora={{"{name}": {{"files": "{files}", "domain": "law"}}}}'])
        docs[name] = sorted((d.doc_id.split(":", 1)[1], d.text)
                            for d in registry.iter_documents(name))
    assert len(docs["globbed"]) == 3
    assert docs["folder"] == docs["slashed"] == docs["globbed"]
    (tmp_path / "empty").mkdir()
    _declare("lawe", files="empty")
    with pytest.raises(CorpusSourceError, match=r"corpora.lawe.files folder 'empty' holds no"):
        registry.corpus_fingerprint("lawe")


def test_missing_files_and_fields_are_one_clear_error(tmp_path):
    _declare("lawe", files="nowhere/*.jsonl")
    with pytest.raises(CorpusSourceError, match=r"corpora.lawe.files pattern 'nowhere/\*"):
        registry.corpus_fingerprint("lawe")
    _jsonl(tmp_path / "law" / "a.jsonl", RECORDS)
    _declare("lawe", files="law/a.jsonl", text_field="body")
    with pytest.raises(CorpusSourceError) as err:
        next(registry.iter_documents("lawe"))
    assert "record 1 of law/a.jsonl has no field 'body'" in str(err.value)
    assert "set corpora.lawe.text_field" in str(err.value)
    _declare("lawe", files="law/a.jsonl", id_field="case")  # not unique
    with pytest.raises(ValueError, match="duplicate document ids"):
        next(registry.iter_documents("lawe"))


@pytest.mark.parametrize("spec, field", [
    ({"files": "x.jsonl"}, "corpora.bad.domain"),
    ({"domain": "law"}, "corpora.bad.files/hf_dataset"),
    ({"domain": "law", "files": "x", "hf_dataset": "a/b"}, "corpora.bad.files/hf_dataset"),
    ({"domain": "law", "files": "x", "data_files": "y"}, "corpora.bad.data_files"),
    ({"domain": "law", "files": "x", "format": "xml"}, "corpora.bad.format"),
    ({"domain": "law", "files": "x", "text_fild": "t"}, "corpora.bad.text_fild"),
])
def test_config_errors_name_the_corpus_field(spec, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        declared_config([f"corpora={json.dumps({'bad': spec})}"])


def test_built_in_names_cannot_be_redeclared():
    with pytest.raises(ConfigError, match="'medical' is a built-in corpus"):
        declared_config(['corpora={"medical": {"files": "x", "domain": "law"}}'])


def test_cli_lists_and_reports_the_configs_corpora(tmp_path, capsys):
    _jsonl(tmp_path / "law" / "a.jsonl", RECORDS)
    (tmp_path / "law.yaml").write_text(
        "train_corpora: [lawc, broad]\neval_corpora: [lawc, broad]\ncorpora:\n  lawc:\n"
        "    files: law/*.jsonl\n    domain: law\n    group_field: case\n")
    assert main(["corpora", "law.yaml", "--no-tokens", "--corpus", "lawc"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:3] == ["lawc", "local", "law"]
    assert main(["corpora", "law.yaml", "--leakage", "--corpus", "lawc"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[0] == "lawc" and int(row[1]) + int(row[2]) == len(RECORDS)
    (tmp_path / "law" / "a.jsonl").unlink()
    assert main(["corpora", "law.yaml", "--leakage", "--corpus", "lawc"]) == 1
    assert "matches no file" in capsys.readouterr().err
