"""Tests for the corpus registry: real embedded corpora, hub renderers on schema records."""

from __future__ import annotations

import itertools
import re
import sys
from collections import Counter

import pytest

from sae_med.config import default_cache_dir
from sae_med.corpora import documents, registry
from sae_med.corpora import embedded as corpora_embedded
from sae_med.corpora import hub as corpora_hub
from sae_med.corpora.documents import Document
from sae_med.corpora.leakage import corpus_leakage, leakage_by

EMBEDDED = ["hpo", "icd10cm", "wordnet", "austen", "gcide", "fortunes", "go", "foldoc"]
BUILD_0 = EMBEDDED[:6]
"""The sources parsed together before the placebo domains (go, foldoc) were added."""
DOMAINS = {"medical": "medical", "broad": "broad", "go": "biology", "foldoc": "computing"}


@pytest.fixture(scope="module")
def corpora() -> dict[str, list[Document]]:
    """Every embedded leaf corpus in full (parsed once into the user cache, then read)."""
    registry.prepare_embedded(EMBEDDED)
    return {name: list(registry.iter_documents(name)) for name in EMBEDDED}


def _by_id(docs: list[Document]) -> dict[str, Document]:
    return {d.doc_id: d for d in docs}


# --------------------------------------------------------------------------- registry


def test_unknown_corpus_error_lists_every_name():
    with pytest.raises(registry.UnknownCorpusError) as exc:
        registry.corpus_info("pubmed-abstracts")
    for name in registry.list_corpora():
        assert name in str(exc.value)
    with pytest.raises(registry.UnknownCorpusError):
        next(registry.iter_documents("nope"))
    assert isinstance(exc.value, ValueError)


def test_registry_describes_every_corpus():
    names = registry.list_corpora()
    mixed = [f"mixed_{pct}" for pct in registry.MIXED_SHARES]
    assert {"medical", "broad", "clinical_qa", "web", *EMBEDDED, *mixed} <= set(names)
    for name in names:
        info = registry.corpus_info(name)
        assert info.kind in ("embedded", "hub") and info.domain in DOMAINS.values()
        if info.is_mix and name not in mixed:
            assert len(info.weights) == len(info.sources) and info.unit == "chars"
            assert all(registry.corpus_info(s).domain == info.domain for s in info.sources)
    for pct, name in zip(registry.MIXED_SHARES, mixed, strict=True):
        info = registry.corpus_info(name)
        assert (info.domain, info.sources, info.unit) == ("broad", ("broad", "medical"),
                                                          "tokens")
        assert info.weights == pytest.approx((1 - pct / 100, pct / 100))
    assert {n: registry.corpus_info(n).domain for n in DOMAINS} == DOMAINS
    assert registry.corpus_info("medical").sources == ("hpo", "icd10cm")
    with pytest.raises(ValueError, match="split"):
        next(registry.iter_documents("hpo", "test"))


# --------------------------------------------------------------------------- split & order


def test_split_is_deterministic_disjoint_and_about_ten_percent(corpora):
    docs = corpora["icd10cm"]
    assert [d.split for d in docs[:500]] == [documents.split_of(d.group) for d in docs[:500]]
    train = {d.doc_id for d in registry.iter_documents("hpo", "train")}
    evl = {d.doc_id for d in registry.iter_documents("hpo", "eval")}
    assert train.isdisjoint(evl)
    assert train | evl == {d.doc_id for d in corpora["hpo"]}
    for name, docs in corpora.items():
        frac = sum(d.split == "eval" for d in docs) / len(docs)
        assert 0.085 < frac < 0.115, (name, frac)
    assert documents.split_of("x", eval_frac=0.0) == "train"
    assert documents.split_of("x", eval_frac=1.0) == "eval"
    # a document without a group is a group of its own
    assert Document("t", "a:1", "a").split == documents.split_of("a:1")


def test_related_documents_share_a_group_and_a_side(corpora):
    by_id = {n: _by_id(docs) for n, docs in corpora.items()}
    hpo = by_id["hpo"]
    assert hpo["hpo:HP:0000028:def"].group == hpo["hpo:HP:0000028:comment"].group \
        == "hpo:HP:0000028"
    icd = by_id["icd10cm"]
    assert {icd[i].group for i in ("icd10cm:A00:desc", "icd10cm:A00.0:desc",
                                   "icd10cm:A00.0:note:0", "icd10cm:A00.9:desc")} \
        == {"icd10cm:A00"}
    assert icd["icd10cm:chapter:1:desc"].group == "icd10cm:chapter:1"
    wn = by_id["wordnet"]
    assert wn["wordnet:noun:00001740"].group == "wordnet:entity"
    bank = [d for d in corpora["wordnet"] if d.text.startswith("bank: ")]
    assert len(bank) > 10 and {d.group for d in bank} == {"wordnet:bank"}
    gcide = [d for d in corpora["gcide"] if d.labels["headword"][0] == "Sound"]
    assert len(gcide) > 1 and {d.group for d in gcide} == {"gcide:sound"}
    chunks = [d for d in corpora["austen"] if d.doc_id.startswith("austen:prideprejudice:")]
    assert chunks[0].group.startswith("austen:prideprejudice:")
    assert 40 < len({d.group for d in chunks}) < 80  # 61 chapters
    for name, docs in corpora.items():  # no group straddles the split
        sides: dict[str, set[str]] = {}
        for d in docs:
            assert d.group.startswith(name + ":"), (name, d.doc_id)
            sides.setdefault(d.group, set()).add(d.split)
        assert all(len(s) == 1 for s in sides.values()), name


def test_doc_ids_unique_and_documents_non_empty(corpora):
    for name, docs in corpora.items():
        assert len(docs) > 4000, name
        ids = [d.doc_id for d in docs]
        assert len(set(ids)) == len(ids), name
        assert all(i.startswith(name + ":") for i in ids), name
        assert all(d.source == name for d in docs), name
        assert all(d.text.strip() for d in docs), name


def test_order_is_a_deterministic_shuffle_independent_of_the_split(corpora):
    docs = corpora["icd10cm"]
    again = [d.doc_id for d in itertools.islice(registry.iter_documents("icd10cm"), 1000)]
    assert again == [d.doc_id for d in docs[:1000]]
    keys = [documents.order_key(d.doc_id) for d in docs]
    assert keys == sorted(keys)
    # a prefix is not one chapter (file order would start with cholera) and holds ~10% eval
    assert len({d.labels.get("chapter") for d in docs[:300]}) > 15
    frac = sum(d.split == "eval" for d in docs[:3000]) / 3000
    assert 0.07 < frac < 0.13


# --------------------------------------------------------------------------- contents


def test_hpo_labels_and_text(corpora):
    docs = corpora["hpo"]
    ageusia = [d for d in docs if d.labels["term"] == ("Ageusia",)]
    assert {d.doc_id.rsplit(":", 1)[1] for d in ageusia} >= {"def"}
    d = next(d for d in ageusia if d.doc_id.endswith(":def"))
    assert d.text.startswith("Ageusia: ") and "taste" in d.text
    assert "Abnormality of taste sensation" in d.labels["ancestors"]
    assert "Phenotypic abnormality" in d.labels["ancestors"]
    assert all("All" not in x.labels["ancestors"] for x in docs)
    assert not any('\\"' in x.text for x in docs)
    kinds = Counter(x.doc_id.rsplit(":", 1)[1] for x in docs)
    assert kinds["def"] > 15_000 and kinds["comment"] > 4_000


def test_icd10cm_labels_and_notes(corpora):
    docs = _by_id(corpora["icd10cm"])
    d = docs["icd10cm:A00.0:desc"]
    assert d.text == "Cholera due to Vibrio cholerae 01, biovar cholerae"
    assert d.labels["chapter"] == ("Certain infectious and parasitic diseases",)
    assert d.labels["block"] == ("Intestinal infectious diseases",)
    assert d.labels["code"] == ("A00.0",) and d.labels["parents"] == ("Cholera",)
    assert docs["icd10cm:A00.0:note:0"].text == "Inclusion term: Classical cholera"
    kinds = Counter(x.labels["kind"][0] for x in docs.values())
    assert kinds["desc"] > 45_000 and kinds["excludes1"] > 1_000
    assert any(x.text.startswith("Excludes2: ") for x in docs.values())


def test_wordnet_glosses(corpora):
    docs = _by_id(corpora["wordnet"])
    d = docs["wordnet:noun:00001740"]
    assert d.text.startswith("entity: that which is perceived or known")
    assert d.labels == {"lemmas": ("entity",), "pos": ("noun",), "lexname": ("noun.Tops",)}
    assert Counter(x.labels["pos"][0] for x in docs.values())["noun"] > 80_000
    assert not any("_" in x.labels["lemmas"][0] for x in docs.values())


def test_austen_chunks(corpora):
    docs = corpora["austen"]
    assert {d.labels["book"][0] for d in docs} == set(corpora_embedded.AUSTEN_TITLES.values())
    words = [len(d.text.split()) for d in docs]
    assert sum(100 <= w <= 400 for w in words) / len(words) > 0.9
    assert not any("_" in d.text for d in docs)
    first = next(d for d in docs if d.doc_id == "austen:prideprejudice:00000")
    assert first.text.startswith("It is a truth universally acknowledged")


def test_gcide_has_no_markup_left(corpora):
    docs = corpora["gcide"]
    markup = re.compile(r"[\\{}\[\]<>]|1913 Webster|\w[\"*`]\w")
    bad = [d.text for d in docs if markup.search(d.text)]
    assert len(bad) < 0.001 * len(docs), bad[:3]
    acro = [d for d in docs if "Acropolis" in d.labels["headword"]]
    assert any("citadel" in d.text for d in acro)
    raw = ('Acrospire \\Ac"ro*spire\\ ([a^]k"r[-o]*sp[imac]r), n. [Gr. ? + ? twisted.] '
           "(Bot.)\n   The sprout of a seed; -- called from its {spiral} form.\n   "
           "[1913 Webster]")
    assert corpora_embedded.clean_gcide(raw) == (
        "Acrospire, n. (Bot.) The sprout of a seed; -- called from its spiral form.")


def test_fortunes(corpora):
    docs = corpora["fortunes"]
    assert not any(re.search(r"^%$", d.text, re.M) for d in docs)
    files = {d.labels["file"][0] for d in docs}
    assert "computers" in files and "ascii-art" not in files


def test_go_definitions_grouped_by_their_parent_term(corpora):
    docs = corpora["go"]
    by_term = {d.labels["term"][0]: d.doc_id.removeprefix("go:") for d in docs}
    d = next(d for d in docs if d.doc_id == "go:GO:0000001")
    assert d.text.startswith("mitochondrion inheritance: The distribution of mitochondria")
    assert d.labels["namespace"] == ("biological process",)
    assert d.group.removeprefix("go:") in {by_term[p] for p in d.labels["parents"]}
    namespaces = Counter(x.labels["namespace"][0] for x in docs)
    assert set(namespaces) == set(corpora_embedded.GO_NAMESPACES.values())
    assert len(docs) > 30_000 and len({x.group for x in docs}) > 5_000


def test_foldoc_entries_clean_and_aliases_join_their_target(corpora):
    docs = corpora["foldoc"]
    alias = next(d for d in docs if d.text == "SD: Structured Design")
    target = next(d for d in docs if d.text.startswith("structured design: (SD) "))
    assert alias.group == target.group == "foldoc:structured design"
    assert not any(re.fullmatch(r"[^:]*: \W*", d.text) for d in docs)  # a bare citation
    markup = re.compile(r"[{}\[\]]|\(\d{4}-\d\d-\d\d\)$|^[^:]*: <[a-z]")
    bad = [d.text for d in docs if markup.search(d.text)]
    assert len(bad) < 0.005 * len(docs), bad[:3]
    raw = ("\n   <language, humour> A {class} of {C++\n   (http://x.org/)}.\n\n"
           "   [{Jargon File}].\n\n   2. <web> A {page}.\n\n   (1996-06-06)\n\n")
    assert corpora_embedded.clean_foldoc(raw) == (
        "A class of C++.\n2. A page.", ("language", "humour", "web"))


# --------------------------------------------------------------------------- mixes


def test_mixes_interleave_by_character_share(corpora):
    prefix = list(itertools.islice(registry.iter_documents("medical"), 4000))
    chars = Counter()
    for d in prefix:
        chars[d.source] += len(d.text)
    assert 0.45 < chars["hpo"] / sum(chars.values()) < 0.55
    assert [d.doc_id for d in itertools.islice(registry.iter_documents("medical"), 4000)] == \
           [d.doc_id for d in prefix]
    # each source keeps its own shuffled order inside the mix
    hpo_ids = [d.doc_id for d in prefix if d.source == "hpo"]
    assert hpo_ids == [d.doc_id for d in corpora["hpo"][:len(hpo_ids)]]
    # a mix's eval split is exactly its members' eval splits
    n_eval = sum(1 for _ in registry.iter_documents("medical", "eval"))
    assert n_eval == sum(d.split == "eval" for s in ("hpo", "icd10cm") for d in corpora[s])
    broad = list(itertools.islice(registry.iter_documents("broad", "train"), 400))
    assert {d.source for d in broad} == {"wordnet", "austen", "gcide", "fortunes"}
    assert all(d.split == "train" for d in broad)


def test_mix_parts_are_what_an_sae_trained_on_the_mix_has_seen():
    assert registry.mix_parts("broad") == {"wordnet", "austen", "gcide", "fortunes"}
    # through a mix of mixes: mixed_10's SAE has seen broad's members and medical's
    assert {"broad", "medical", "wordnet", "austen", "hpo", "icd10cm"} <= \
        registry.mix_parts("mixed_10")
    assert registry.mix_parts("go") == registry.mix_parts("wordnet") == frozenset()
    assert "go" not in registry.mix_parts("broad") and "foldoc" not in registry.mix_parts(
        "broad")  # the placebo domains are new to the broad SAE


def test_interleave_balances_uneven_documents():
    long = registry.char_sizes([Document("x" * 100, f"a:{i}", "a") for i in range(50)])
    short = registry.char_sizes([Document("y" * 10, f"b:{i}", "b") for i in range(500)])
    out = list(itertools.islice(registry.interleave([long, short], [0.5, 0.5]), 220))
    n_a = sum(d.source == "a" for d in out)
    assert abs(100 * n_a - 10 * (len(out) - n_a)) <= 100
    rest = list(registry.interleave([registry.char_sizes(out[:3]), iter([])], [0.5, 0.5]))
    assert rest == out[:3]


def test_mixed_corpora_keep_their_parents_groups_and_eval_splits(corpora):
    """Every document keeps its parent's group: the eval split is the parents' eval
    documents, and no group of a training prefix (what a cache takes) is in it."""
    name = f"mixed_{registry.MIXED_SHARES[-1]}"
    members = {d.doc_id: d for n in BUILD_0 for d in corpora[n]}
    evals = list(registry.iter_documents(name, "eval"))
    assert sorted(d.doc_id for d in evals) == \
        sorted(i for i, d in members.items() if d.split == "eval")
    assert sorted(d.doc_id for d in registry.iter_unordered(name, "eval")) == \
        sorted(d.doc_id for d in evals)
    prefix = list(itertools.islice(registry.iter_documents(name, "train"), 5000))
    assert all(d.group == members[d.doc_id].group for d in [*prefix, *evals])
    assert {d.group_key for d in prefix}.isdisjoint(d.group_key for d in evals)
    assert {d.source for d in prefix} == set(BUILD_0)


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    """A tiny random Gemma-2 with the embedded Gemma-3 tokenizer: caches as the default's
    model tokenizes them, in seconds."""
    from tiny_lms import save_tiny_lm

    from sae_med.lm.load import load_model

    return load_model(str(save_tiny_lm(tmp_path_factory.mktemp("tiny") / "gemma2",
                                       "gemma2")), device="cpu")


@pytest.mark.parametrize("pct", registry.MIXED_SHARES)
def test_mixed_corpus_caches_its_medical_share_of_tokens(pct, tiny_gemma, tmp_path):
    """The activation cache an SAE trains on, built with the default's cache settings:
    ``pct``% of its rows (tokens) come from medical documents, within one point."""
    from sae_med.cache.activations import build_cache
    from sae_med.config import load_config

    cfg = load_config("configs/default.yaml", [f"cache_dir={tmp_path}", "model.hook_layer=1"])
    assert cfg.cache.ctx_len == registry.MIX_CTX_LEN
    cache = build_cache(tiny_gemma, cfg, f"mixed_{pct}", "train", progress=False)
    medical = {n for n in EMBEDDED if registry.corpus_info(n).domain == "medical"}
    is_medical = [d.split(":", 1)[0] in medical for d in cache.doc_ids()]
    rows = cache.tokens().doc_index.tolist()
    assert len(rows) == cfg.cache.n_tokens
    assert abs(sum(is_medical[i] for i in rows) / len(rows) - pct / 100) <= 0.01



# --------------------------------------------------------------------------- caching


def test_fingerprints_are_stable_and_distinct(corpora):
    fps = {n: registry.corpus_fingerprint(n) for n in [*EMBEDDED, "medical", "broad"]}
    assert fps == {n: registry.corpus_fingerprint(n) for n in fps}
    assert len(set(fps.values())) == len(fps)
    assert all(re.fullmatch(r"[0-9a-f]{16}", f) for f in fps.values())


def test_token_mixes_are_keyed_by_their_tokenizer(monkeypatch):
    name = f"mixed_{registry.MIXED_SHARES[0]}"
    before = registry.corpus_fingerprint(name)
    monkeypatch.setattr(registry, "MIX_CTX_LEN", registry.MIX_CTX_LEN * 2)
    assert registry.corpus_fingerprint(name) != before


def test_placebo_build_leaves_the_earlier_corpora_unchanged(corpora, monkeypatch):
    """Build 0's fingerprints (so its caches) are those of a registry without the placebo
    domains, and those are de-duplicated after it: none of their texts is in build 0."""
    fps = {n: registry.corpus_fingerprint(n) for n in [*BUILD_0, "medical", "broad"]}
    without = {n: i for n, i in registry._REGISTRY.items() if i.build == 0}
    monkeypatch.setattr(registry, "_REGISTRY", without)
    assert registry.embedded_leaves() == BUILD_0
    assert {n: registry.corpus_fingerprint(n) for n in fps} == fps
    earlier = {documents.text_digest(d.text) for n in BUILD_0 for d in corpora[n]}
    assert not any(documents.text_digest(d.text) in earlier
                   for n in ("go", "foldoc") for d in corpora[n])


class _WordTokenizer:
    name_or_path = "test-whitespace"

    def __init__(self) -> None:
        self.calls = 0

    def __len__(self) -> int:
        return 1000

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        self.calls += 1
        return {"input_ids": [t.split() for t in texts]}


def test_corpus_stats_counts_and_caches(corpora, tmp_path, monkeypatch):
    for sub in ("corpora", "debian"):  # the parsed corpora, but fresh stats
        (tmp_path / sub).symlink_to(default_cache_dir() / sub)
    monkeypatch.setenv("SAE_MED_CACHE", str(tmp_path))
    tok = _WordTokenizer()
    stats = registry.corpus_stats("hpo", tok, split="eval")
    docs = list(registry.iter_documents("hpo", "eval"))
    assert stats == (len(docs), sum(len(d.text.split()) for d in docs), None)
    calls = tok.calls
    assert registry.corpus_stats("hpo", tok, split="eval") == stats
    assert tok.calls == calls  # served from the on-disk cache
    assert list((tmp_path / "stats").glob("hpo-eval-*.json"))


def test_debian_fetch_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_MED_CACHE", str(tmp_path))
    monkeypatch.setattr(corpora_embedded.shutil, "which", lambda tool: None)
    with pytest.raises(corpora_embedded.CorpusFetchError,
                       match=r"wordnet-base.*apt-get download wordnet-base"):
        next(registry.iter_documents("wordnet"))


# --------------------------------------------------------------------------- leakage


def test_embedded_corpora_do_not_leak(corpora):
    """Per corpus, against the training text of every embedded corpus (so within each
    corpus, each mix and across them): no exact and <= 1% near-duplicate leakage."""
    report = leakage_by(itertools.chain(*corpora.values()))
    assert set(report) == set(EMBEDDED)
    for name, r in report.items():
        assert r.exact == 0 and r.near <= 0.01, r
        assert r.eval_documents > 0.08 * len(corpora[name]), r
    texts = [{documents.text_digest(d.text) for d in docs} for docs in corpora.values()]
    assert sum(map(len, texts)) == len(set().union(*texts))  # no text in two corpora


def test_corpus_leakage_reports_what_dedup_removed(corpora):
    r = corpus_leakage("fortunes")
    assert (r.corpus, r.exact, r.near) == ("fortunes", 0.0, 0.0)
    assert r.train_documents + r.eval_documents == len(corpora["fortunes"])
    assert r.removed is not None and r.removed.exact > 10  # fortunes repeat across files
    hpo, icd = registry.duplicates_removed("hpo"), registry.duplicates_removed("icd10cm")
    assert registry.duplicates_removed("medical") == (hpo.exact + icd.exact,
                                                  hpo.near_eval + icd.near_eval)
    assert icd.exact > 1000  # ICD-10-CM repeats notes and descriptions verbatim
    assert registry.duplicates_removed("clinical_qa") is None


def test_domains_config_is_the_default_with_an_sae_per_corpus():
    """configs/domains.yaml: the default's recipe at one target L0 (its middle one), an
    SAE per corpus (the domain, two placebo definition domains, definitions without a
    domain, narrative prose, broad, mixed), each scored on every corpus but the mix, with
    half the default's spliced-CE tokens per corpus (six corpora to score)."""
    from sae_med.config import load_config
    from sae_med.report.notebook import domain_pair

    cfg = load_config("configs/domains.yaml")
    assert {registry.corpus_info(c).domain for c in cfg.train_corpora} == set(DOMAINS.values())
    assert {"wordnet", "austen", "broad", "mixed_10"} <= set(cfg.train_corpora)
    assert set(cfg.eval_corpora) == set(cfg.train_corpora) - {"mixed_10"}
    assert domain_pair(cfg) == ("medical", "broad")
    lists = [f"{k}=[{', '.join(getattr(cfg, k))}]" for k in ("train_corpora", "eval_corpora")]
    default = load_config("configs/default.yaml")
    assert cfg.sae.l0_targets == (default.sae.l0_targets[1],)
    same = ["name=domains", *lists, "replications={}", "learning_curve={}",
            f"sae.l0_targets=[{cfg.sae.l0_targets[0]}]",
            f"eval.ce_tokens={default.eval.ce_tokens // 2}"]
    assert load_config("configs/default.yaml", same) == cfg


# --------------------------------------------------------------------------- hub


def test_render_medqa():
    record = {"question": "A 23-year-old woman has dysuria. Which drug is best?",
              "answer": "Nitrofurantoin", "answer_idx": "D",
              "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline",
                          "D": "Nitrofurantoin"},
              "meta_info": "step2&3", "metamap_phrases": ["dysuria"]}
    assert corpora_hub.render_medqa(record) == (
        "A 23-year-old woman has dysuria. Which drug is best?\n"
        "The options are:\nA. Ampicillin\nB. Ceftriaxone\nC. Doxycycline\nD. Nitrofurantoin\n"
        "Correct option: D. Nitrofurantoin")


def test_render_medmcqa():
    record = {"id": "e9ad821a", "question": "Chronic urethral obstruction leads to:",
              "opa": "Hyperplasia", "opb": "Hypertrophy", "opc": "Atrophy",
              "opd": "Dyplasia", "cop": 2, "choice_type": "single",
              "exp": "Back pressure causes atrophy.", "subject_name": "Anatomy",
              "topic_name": "Urinary tract"}
    expected = ("Chronic urethral obstruction leads to:\nThe options are:\nA. Hyperplasia\n"
                "B. Hypertrophy\nC. Atrophy\nD. Dyplasia\nCorrect option: C. Atrophy\n"
                "Explanation: Back pressure causes atrophy.")
    assert corpora_hub.render_medmcqa(record) == expected
    assert corpora_hub.render_medmcqa({**record, "exp": None}) == \
        expected.rsplit("\nExplanation", 1)[0]


def test_render_pubmedqa():
    record = {"pubid": 21645374, "question": "Do mitochondria play a role in remodelling?",
              "context": {"contexts": ["Programmed cell death is ...", "Leaves were ..."],
                          "labels": ["BACKGROUND", "RESULTS"], "meshes": ["Apoptosis"]},
              "long_answer": "Results show that mitochondria play a role.",
              "final_decision": "yes"}
    assert corpora_hub.render_pubmedqa(record) == (
        "Context: Programmed cell death is ... Leaves were ...\n"
        "Do mitochondria play a role in remodelling?\n"
        "The options are:\nA. yes\nB. no\nC. maybe\nCorrect option: A. yes\n"
        "Long answer: Results show that mitochondria play a role.")


def test_render_mmlu():
    record = {"question": "Which organ produces insulin?", "subject": "college_medicine",
              "choices": ["Liver", "Pancreas", "Kidney", "Spleen"], "answer": 1}
    assert corpora_hub.render_mmlu(record) == (
        "Which organ produces insulin?\nThe options are:\nA. Liver\nB. Pancreas\n"
        "C. Kidney\nD. Spleen\nCorrect option: B. Pancreas")


def _word(i: int) -> str:
    return chr(97 + i // 26) + chr(97 + i % 26)


def test_clinical_qa_loader_on_schema_records():
    def loader(corpus, path, config, split, streaming=False):
        assert corpus == "clinical_qa" and not streaming
        if path == "GBaker/MedQA-USMLE-4-options":
            return [{"question": f"q {_word(i)}", "answer": "x", "answer_idx": "A",
                     "options": {"A": "x", "B": "y"}} for i in range(30)]
        if "medmcqa" in path:  # items i and i + 30 ask the same question; 5 exact copies
            items = [{"id": f"m{i}", "question": f"Which nerve supplies {_word(i % 30)}?",
                      "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": i // 30, "exp": "",
                      "subject_name": "Anatomy"} for i in range(60)]
            return items + [{**items[0], "id": f"m{60 + i}"} for i in range(5)]
        if "PubMedQA" in path:
            return [{"pubid": i, "question": f"p {_word(i)}", "context": {"contexts": ["c"]},
                     "long_answer": "l", "final_decision": "no"} for i in range(10)]
        return [{"question": f"{config} {_word(i)}", "choices": ["a", "b"], "answer": 0,
                 "subject": config} for i in range(5)]

    docs = list(corpora_hub.iter_clinical_qa(loader))
    assert len(docs) == 30 + 60 + 10 + 3 * 5
    assert len({d.doc_id for d in docs}) == len(docs)
    assert len({d.text for d in docs}) == len(docs)
    assert [documents.order_key(d.doc_id) for d in docs] == \
           sorted(documents.order_key(d.doc_id) for d in docs)
    assert Counter(d.source for d in docs) == {"medqa": 30, "medmcqa": 60, "pubmedqa": 10,
                                               "mmlu": 15}
    assert all("Correct option: " in d.text for d in docs)
    by_id = _by_id(docs)
    for i in range(30):  # one question, one group, one side
        a, b = by_id[f"medmcqa:m{i}"], by_id[f"medmcqa:m{i + 30}"]
        assert a.group == b.group and a.group.startswith("clinical_qa:")
    assert len({d.group for d in docs}) == 30 + 30 + 10 + 15


def test_web_loader_shuffles_within_windows_and_skips_repeats():
    def loader(corpus, path, config, split, streaming=False):
        assert streaming and corpus == "web"
        pages = [{"id": f"u{i}", "text": f"page {i}"} for i in range(25)]
        return iter([*pages, {"id": "u25", "text": "page 3"}])  # a repeat in a later window

    docs = list(corpora_hub.iter_web(loader, window=10))
    assert sorted(d.doc_id for d in docs) == sorted(f"web:u{i}" for i in range(25))
    assert {d.doc_id for d in docs[:10]} == {f"web:u{i}" for i in range(10)}
    assert [d.doc_id for d in docs] == [d.doc_id for d in corpora_hub.iter_web(loader, 10)]
    # pages differing only in a number are near-duplicates: one group, one side
    assert {d.group for d in docs} == {documents.near_group("page 0")}


@pytest.mark.parametrize("name", ["clinical_qa", "web"])
def test_hub_corpus_offline_gives_one_clear_error(name, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "datasets" in sys.modules:  # the flags are read at import time
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_HUB_OFFLINE", True)
    with pytest.raises(corpora_hub.CorpusUnavailableError) as exc:
        next(registry.iter_documents(name, "train"))
    msg = str(exc.value)
    assert "internet" in msg and "'medical'" in msg and "'broad'" in msg
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
