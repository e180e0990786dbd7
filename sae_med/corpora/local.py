"""Corpora declared in a config (``corpora:``): records from local files or a hub dataset.

Local files are text (``.txt``/``.md``: one document per file), JSON lines, CSV or
Parquet (one document per record). A hub dataset is read with ``datasets.load_dataset``,
from local ``data_files`` when given (its packaged json/csv/parquet/text builder: no
network). Each record becomes a :class:`~sae_med.corpora.documents.Document` named by the config's
fields; :mod:`sae_med.corpora.registry` splits, de-duplicates, fingerprints and caches them.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sae_med.config import CorpusSpec
from sae_med.corpora.documents import Document, text_digest

EXTENSION_FORMATS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".json": "jsonl",
                     ".csv": "csv", ".parquet": "parquet"}
HF_BUILDERS = {"text": "text", "jsonl": "json", "csv": "csv", "parquet": "parquet"}


class CorpusSourceError(ValueError):
    """A declared corpus's files are missing or its records lack a configured field."""


def folder_files(folder: Path, fmt: str) -> list[Path]:
    """The files a folder under ``files:`` stands for: every file below it, hidden ones
    (``.DS_Store``, ``.git/``) left out and, with ``format: auto``, only those whose
    extension names a format (so a stray ``notes.log`` is not an error)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and (fmt != "auto" or p.suffix.lower() in EXTENSION_FORMATS))


def _expand(name: str, field: str, patterns: tuple[str, ...], fmt: str) -> list[Path]:
    """The files of ``patterns``, each a glob or a folder (:func:`folder_files`)."""
    found: list[Path] = []
    for pattern in patterns:
        path = os.path.expanduser(pattern)
        if os.path.isdir(path):
            hits = folder_files(Path(path), fmt)
            what = f"folder {pattern!r} holds no {'/'.join(EXTENSION_FORMATS)} file" \
                if fmt == "auto" else f"folder {pattern!r} holds no file"
        else:
            hits = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
            what = f"pattern {pattern!r} matches no file"
        if not hits:
            raise CorpusSourceError(f"corpus {name!r}: corpora.{name}.{field} {what} "
                                    f"(relative paths are from {Path.cwd()})")
        found += [p for p in hits if p not in found]
    return found


def source_files(name: str, spec: CorpusSpec) -> list[Path]:
    """The local files a declared corpus reads (none for a hub dataset read online)."""
    return _expand(name, "files", spec.files, spec.format) if spec.files else (
        _expand(name, "data_files", spec.data_files, spec.format))


def file_format(path: Path, spec: CorpusSpec, name: str) -> str:
    """``text``, ``jsonl``, ``csv`` or ``parquet``: ``spec.format``, else the extension."""
    if spec.format != "auto":
        return spec.format
    fmt = EXTENSION_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CorpusSourceError(
            f"corpus {name!r}: cannot tell the format of {path} from its extension; set "
            f"corpora.{name}.format to one of text, jsonl, csv, parquet")
    return fmt


def read_records(path: Path, fmt: str) -> Iterator[Mapping[str, Any]]:
    """The records of one file (``text``: the whole file as one record ``{"text"}``)."""
    if fmt == "text":
        yield {"text": path.read_text(encoding="utf-8")}
    elif fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise CorpusSourceError(f"{path} line {i} is not JSON: {err}") from None
    elif fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            yield from csv.DictReader(f)
    elif fmt == "parquet":
        # deferred: pyarrow is heavy to import; only Parquet files need it
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
    else:
        raise CorpusSourceError(f"unknown format {fmt!r} for {path}")


class Record(NamedTuple):
    where: str
    """The file (or hub dataset) it came from, for error messages."""
    fields: Mapping[str, Any]
    default_id: str
    """Its id when the config names no ``id_field`` (text files: the path; else empty)."""


def _hf_records(name: str, spec: CorpusSpec) -> Iterator[Record]:
    """Records of a hub dataset: local ``data_files`` through the packaged builder of
    their format, else the hub (``hf_dataset``, ``hf_config``, ``split``)."""
    # deferred: datasets is heavy to import; only hub corpora need it
    import datasets

    if spec.data_files:
        files = source_files(name, spec)
        fmts = {file_format(p, spec, name) for p in files}
        if len(fmts) != 1:
            raise CorpusSourceError(f"corpus {name!r}: data_files mix formats {sorted(fmts)}")
        ds = datasets.load_dataset(HF_BUILDERS[fmts.pop()],
                                   data_files=[str(p) for p in files], split="train")
        where = f"{spec.hf_dataset} (data_files)"
    else:
        ds = datasets.load_dataset(spec.hf_dataset, spec.hf_config or None, split=spec.split)
        where = f"{spec.hf_dataset}/{spec.split}"
    for record in ds:
        yield Record(where, record, "")


def _records(name: str, spec: CorpusSpec) -> Iterator[Record]:
    """Every record of a declared corpus, in file order."""
    if spec.hf_dataset:
        yield from _hf_records(name, spec)
        return
    files = source_files(name, spec)
    root = Path(os.path.commonpath([p.resolve().parent for p in files]))
    for path in files:
        fmt = file_format(path, spec, name)
        ident = path.resolve().relative_to(root).as_posix() if fmt == "text" else ""
        for record in read_records(path, fmt):
            yield Record(str(path), record, ident)


def _field(record: Mapping[str, Any], key: str, name: str, setting: str, where: str,
           index: int) -> Any:
    if key not in record:
        raise CorpusSourceError(
            f"corpus {name!r}: record {index} of {where} has no field {key!r} (its fields: "
            f"{', '.join(map(str, record)) or 'none'}); set corpora.{name}.{setting}")
    return record[key]


def _labels(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return tuple(str(v) for v in value)


def iter_declared(name: str, spec: CorpusSpec) -> Iterator[Document]:
    """The documents of declared corpus ``name`` in file/record order (empty texts skipped).

    ``doc_id`` is ``name:`` + the ``id_field`` value (text files: the path), else a hash
    of the text; ``group`` is ``name:`` + the ``group_field`` value (empty: its own)."""
    for index, (where, rec, default_id) in enumerate(_records(name, spec), start=1):
        text = _field(rec, spec.text_field, name, "text_field", where, index)
        if not isinstance(text, str) or not text.strip():
            continue
        ident = (str(_field(rec, spec.id_field, name, "id_field", where, index))
                 if spec.id_field else default_id or text_digest(text).hex())
        group = (f"{name}:{_field(rec, spec.group_field, name, 'group_field', where, index)}"
                 if spec.group_field else "")
        labels = {key: _labels(_field(rec, key, name, "labels_field", where, index))
                  for key in spec.labels_field}
        yield Document(text, f"{name}:{ident}", name, labels, group)
