"""Corpora loaded from the Hugging Face hub (need internet or a populated HF cache).

``clinical_qa`` is the paper's domain data: MedQA (train), MedMCQA (train), PubMedQA
(``pqa_labeled`` train) and the MMLU college-medicine / clinical-knowledge /
professional-medicine test splits, each item rendered by a pure ``render_*`` function:

    <question>
    The options are:
    A. <option>
    B. <option>
    ...
    Correct option: <letter>. <answer text>

MedMCQA appends ``Explanation: <exp>`` when it has one; PubMedQA starts with
``Context: <abstract sections>`` and ends with ``Long answer: <long_answer>`` (its
options are yes / no / maybe). All items form one shuffled order (natural proportions,
MedMCQA ~94%). Items asking the same question (equal near-duplicate key of the question,
in any source) share a split group; exact duplicates and evaluation items with a
near-duplicate in train are dropped (:func:`~sae_med.corpora.documents.deduplicate`).

``web`` streams FineWeb's ``sample-10BT``; it cannot be sorted whole, so it is shuffled
within consecutive windows of :data:`WEB_WINDOW` documents by the same order key. A
stream cannot be grouped after the fact, so each page's group is its near-duplicate key
(:func:`~sae_med.corpora.documents.near_group`) and a page whose text was already seen is skipped.

With ``$SAE_MED_HUB_FILES`` set to a folder, every dataset is read from a local JSON Lines
file in the hub dataset's schema instead (:func:`local_data_file`), through the same
``datasets`` loader and the same renderers: the paper's path rehearsed offline.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from sae_med.artifacts import file_sha256
from sae_med.corpora.documents import Document, deduplicate, near_group, order_key, text_digest

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
MMLU_SUBJECTS = ("college_medicine", "clinical_knowledge", "professional_medicine")
WEB_DATASET = ("HuggingFaceFW/fineweb", "sample-10BT", "train")
WEB_WINDOW = 10_000
LOCAL_FILES_ENV = "SAE_MED_HUB_FILES"


class CorpusUnavailableError(RuntimeError):
    """A hub corpus could not be loaded (no internet or no HF cache)."""


def _options(pairs: list[tuple[str, str]]) -> str:
    return "The options are:\n" + "\n".join(f"{k}. {str(v).strip()}" for k, v in pairs)


def render_medqa(record: Mapping[str, Any]) -> str:
    """GBaker/MedQA-USMLE-4-options: ``question``, ``options`` ({letter: text} or a list of
    {key, value}), ``answer_idx`` (letter) and ``answer`` (text)."""
    opts = record["options"]
    pairs = ([(o["key"], o["value"]) for o in opts] if isinstance(opts, list)
             else sorted(opts.items()))
    letter = record["answer_idx"].strip()
    answer = record.get("answer") or dict(pairs)[letter]
    return (f"{record['question'].strip()}\n{_options(pairs)}\n"
            f"Correct option: {letter}. {answer.strip()}")


def render_medmcqa(record: Mapping[str, Any]) -> str:
    """openlifescienceai/medmcqa: ``question``, ``opa``..``opd``, ``cop`` (0-3), ``exp``."""
    pairs = [(LETTERS[i], record[f"op{c}"]) for i, c in enumerate("abcd")]
    cop = int(record["cop"])
    text = (f"{record['question'].strip()}\n{_options(pairs)}\n"
            f"Correct option: {LETTERS[cop]}. {str(pairs[cop][1]).strip()}")
    exp = (record.get("exp") or "").strip()
    return f"{text}\nExplanation: {exp}" if exp else text


def render_pubmedqa(record: Mapping[str, Any]) -> str:
    """qiaojin/PubMedQA (pqa_labeled): ``question``, ``context.contexts`` (list),
    ``final_decision`` (yes/no/maybe) and ``long_answer``."""
    choices = ["yes", "no", "maybe"]
    contexts = " ".join(c.strip() for c in record["context"]["contexts"])
    decision = record["final_decision"].strip().lower()
    i = choices.index(decision)
    return (f"Context: {contexts}\n{record['question'].strip()}\n"
            f"{_options(list(zip(LETTERS, choices, strict=False)))}\n"
            f"Correct option: {LETTERS[i]}. {decision}\n"
            f"Long answer: {record['long_answer'].strip()}")


def render_mmlu(record: Mapping[str, Any]) -> str:
    """cais/mmlu: ``question``, ``choices`` (list) and ``answer`` (index)."""
    pairs = list(zip(LETTERS, record["choices"], strict=False))
    a = int(record["answer"])
    return (f"{record['question'].strip()}\n{_options(pairs)}\n"
            f"Correct option: {LETTERS[a]}. {str(record['choices'][a]).strip()}")


def _mmlu_id(subject: str) -> Callable[[Mapping[str, Any], int], str]:
    return lambda r, i: f"mmlu:{subject}:test:{i}"


# (source, dataset, config, split, renderer, id of record i)
_Part = tuple[str, str, str | None, str, Callable[[Mapping[str, Any]], str],
              Callable[[Mapping[str, Any], int], str]]
CLINICAL_QA_PARTS: tuple[_Part, ...] = (
    ("medqa", "GBaker/MedQA-USMLE-4-options", None, "train", render_medqa,
     lambda r, i: f"medqa:train:{i}"),
    ("medmcqa", "openlifescienceai/medmcqa", None, "train", render_medmcqa,
     lambda r, i: f"medmcqa:{r.get('id') or i}"),
    ("pubmedqa", "qiaojin/PubMedQA", "pqa_labeled", "train", render_pubmedqa,
     lambda r, i: f"pubmedqa:{r['pubid']}"),
    *(("mmlu", "cais/mmlu", s, "test", render_mmlu, _mmlu_id(s)) for s in MMLU_SUBJECTS),
)


def hub_spec(name: str) -> dict[str, Any]:
    """What determines a hub corpus's content (for its fingerprint)."""
    try:
        version = metadata.version("datasets")
    except metadata.PackageNotFoundError:
        version = None
    if name == "clinical_qa":
        parts = [list(p[1:4]) for p in CLINICAL_QA_PARTS]
    elif name == "web":
        parts = [list(WEB_DATASET), WEB_WINDOW]
    else:
        raise KeyError(name)
    spec: dict[str, Any] = {"parts": parts, "datasets": version}
    if os.environ.get(LOCAL_FILES_ENV):  # local stand-ins never share a fingerprint
        spec["local_files"] = [file_sha256(local_data_file(*p[1:4])) for p in
                               (CLINICAL_QA_PARTS if name == "clinical_qa"
                                else [(None, *WEB_DATASET)])]
    return spec


def local_data_file(path: str, config: str | None, split: str) -> Path:
    """``$SAE_MED_HUB_FILES/{dataset}/{config or 'default'}/{split}.jsonl``: the local
    stand-in for a hub dataset split (one record per line, the hub's schema)."""
    f = Path(os.environ[LOCAL_FILES_ENV]) / path / (config or "default") / f"{split}.jsonl"
    if not f.is_file():
        raise CorpusUnavailableError(f"${LOCAL_FILES_ENV} is set but {f} does not exist; "
                                     f"write it or unset ${LOCAL_FILES_ENV} to use the hub")
    return f


def load_hub_dataset(corpus: str, path: str, config: str | None, split: str,
                     streaming: bool = False) -> Any:
    """``datasets.load_dataset`` with one clear error instead of a deep trace offline."""
    if os.environ.get(LOCAL_FILES_ENV):
        # deferred: datasets is heavy to import; only hub corpora need it
        import datasets

        return datasets.load_dataset("json", data_files=str(local_data_file(path, config, split)),
                                     split="train", streaming=streaming)
    try:
        # deferred: datasets is heavy to import; only hub corpora need it
        import datasets

        return datasets.load_dataset(path, config, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001 - any failure here means "not reachable"
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise CorpusUnavailableError(
            f"corpus {corpus!r} needs internet access to the Hugging Face hub (or a "
            f"populated HF datasets cache) to load {path}"
            f"{'/' + config if config else ''} [{split}]; loading failed with "
            f"{type(e).__name__}: {first}. Offline, use the embedded corpora 'medical' "
            "(domain) and 'broad' (control) instead.") from None


def iter_clinical_qa(loader: Callable[..., Any] = load_hub_dataset) -> Iterator[Document]:
    docs: list[Document] = []
    for source, path, config, split, render, make_id in CLINICAL_QA_PARTS:
        ds = loader("clinical_qa", path, config, split)
        log.info("clinical_qa: %s%s [%s]: %d items", path, f"/{config}" if config else "",
                 split, len(ds))
        for i, record in enumerate(ds):
            labels = {"dataset": (path if config is None else f"{path}/{config}",)}
            for key in ("subject_name", "topic_name", "subject"):
                if record.get(key):
                    labels[key] = (str(record[key]),)
            docs.append(Document(render(record), make_id(record, i), source, labels,
                                 "clinical_qa:" + near_group(str(record["question"]))))
    built = deduplicate({"clinical_qa": docs})
    log.info("clinical_qa: removed %d exact duplicates, %d evaluation near-duplicates of "
             "training text", *built.removed["clinical_qa"])
    yield from sorted(built.documents["clinical_qa"], key=lambda d: order_key(d.doc_id))


def iter_web(loader: Callable[..., Any] = load_hub_dataset,
             window: int = WEB_WINDOW) -> Iterator[Document]:
    path, config, split = WEB_DATASET
    records = iter(loader("web", path, config, split, streaming=True))
    seen: set[bytes] = set()
    for start in itertools.count(0, window):
        chunk = [Document(r["text"], f"web:{r.get('id') or start + i}", "web", {},
                          near_group(r["text"]))
                 for i, r in enumerate(itertools.islice(records, window))]
        if not chunk:
            return
        fresh = []
        for doc in chunk:
            if (digest := text_digest(doc.text)) not in seen:
                seen.add(digest)
                fresh.append(doc)
        yield from sorted(fresh, key=lambda d: order_key(d.doc_id))


def iter_hub(name: str) -> Iterator[Document]:
    if name == "clinical_qa":
        return iter_clinical_qa()
    if name == "web":
        return iter_web()
    raise KeyError(name)
