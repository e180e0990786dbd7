"""Known-answer tests for de-duplication, grouped splits and the leakage measure on planted
corpora (the real corpora's leakage is tested in test_data.py, where they are loaded)."""

from __future__ import annotations

import itertools

from sae_med.corpora import documents
from sae_med.corpora.documents import Document, Removed, deduplicate, near_duplicate_key
from sae_med.corpora.leakage import Leakage, leakage_by, measure_leakage

# --------------------------------------------------------------------------- normaliser


def test_near_duplicate_key_masks_template_words_only():
    key = near_duplicate_key
    assert key("Displaced fracture of left femur, initial encounter") == \
        key("Displaced fracture of RIGHT femur; subsequent encounter") == \
        "displaced fracture of femur"
    assert key("Type 2 diabetes, 3rd episode") == key("type 1 diabetes (second episode)") \
        == "type # diabetes # episode"
    assert key("Burn of first degree of left upper arm") == key("Burn of third degree of hand")
    assert key("Ageusia: inability to taste") != key("Anosmia: inability to smell")
    assert key("1, 2 and 3") == "# and #" and key("12.5 mg") == "# mg"
    assert key("a_b") == "a b" and key("  ") == ""


# --------------------------------------------------------------------------- planted corpora


def _split_groups(want: str, n: int) -> list[str]:
    """``n`` group names that fall on side ``want``."""
    return [g for g in (f"g{i}" for i in range(10_000)) if documents.split_of(g) == want][:n]


def test_deduplicate_keeps_first_texts_and_drops_eval_near_duplicates():
    (tr,), (ev1, ev2) = _split_groups("train", 1), _split_groups("eval", 2)
    medical = [Document("Fracture of left femur", "m:1", "m", group=tr),
               Document("Fracture of left femur", "m:2", "m", group=ev1),  # exact dup
               Document("Fracture of right femur", "m:3", "m", group=ev1),  # near dup of m:1
               Document("Something unrelated", "m:4", "m", group=ev1)]
    broad = [Document("Something unrelated", "b:1", "b", group=tr),  # exact dup across
             Document("fracture of FEMUR!", "b:2", "b", group=ev2),  # near dup across
             Document("A fresh sentence", "b:3", "b", group=ev2)]
    out = deduplicate({"medical": medical, "broad": broad})
    assert [d.doc_id for d in out.documents["medical"]] == ["m:1", "m:4"]
    assert [d.doc_id for d in out.documents["broad"]] == ["b:3"]
    assert out.removed == {"medical": Removed(exact=1, near_eval=1),
                           "broad": Removed(exact=1, near_eval=1)}
    # the order of corpora decides which copy of a shared text stays
    swapped = deduplicate({"broad": broad, "medical": medical})
    assert "b:1" in [d.doc_id for d in swapped.documents["broad"]]
    assert "m:4" not in [d.doc_id for d in swapped.documents["medical"]]


def _planted_corpus() -> list[Document]:
    """300 concepts of 4 templated variants each (left/right x initial/subsequent
    encounter), and a copy of each concept's first variant planted in an unrelated concept:
    verbatim for even concepts, a near-duplicate for odd ones."""
    docs = []
    for c in range(300):
        organ = chr(97 + c // 26) + chr(97 + c % 26)
        for side, enc in itertools.product(("left", "right"), ("initial", "subsequent")):
            docs.append(Document(f"Injury of {side} organ {organ}, {enc} encounter",
                                 f"p:{c}:{side}:{enc}", "p", group=f"p:{c}"))
        copy = (f"Injury of left organ {organ}, initial encounter" if c % 2 == 0
                else f"INJURY of Right organ {organ}; initial encounter.")
        docs.append(Document(copy, f"p:copy:{c}", "p", group=f"p:{(c + 150) % 300}"))
    return docs


def test_planted_corpus_leaks_by_id_and_not_after_grouping_and_dedup():
    docs = _planted_corpus()
    by_id = measure_leakage([Document(d.text, d.doc_id, d.source) for d in docs], "p")
    assert by_id.exact > 0.05 and by_id.near > 0.9  # siblings straddle a per-document split
    grouped = measure_leakage(docs, "p")
    assert grouped.exact > 0 and grouped.near > 0.5  # groups alone miss the planted copies
    out = deduplicate({"p": docs})
    assert out.removed["p"].exact == 150 and out.removed["p"].near_eval > 0
    clean = measure_leakage(out.documents["p"], "p")
    assert clean.exact == clean.near == 0 and clean.eval_documents > 20
    verbatim = {f"p:copy:{c}" for c in range(0, 300, 2)}  # the only training docs dropped
    assert clean.train_documents == sum(d.split == "train" and d.doc_id not in verbatim
                                        for d in docs)
    sides: dict[str, set[str]] = {}
    for d in out.documents["p"]:
        sides.setdefault(d.group, set()).add(d.split)
    assert all(len(s) == 1 for s in sides.values())  # no group straddles the split


def test_measure_leakage_known_answer():
    (tr,), (ev,) = _split_groups("train", 1), _split_groups("eval", 1)
    docs = [Document("Left knee pain", "x:1", "x", group=tr),
            Document("Left knee pain", "x:2", "x", group=ev),  # exact and near
            Document("Right knee pain", "x:3", "x", group=ev),  # near only
            Document("Headache", "x:4", "x", group=ev),
            Document("Fever", "x:5", "x", group=ev)]
    assert measure_leakage(docs, "x") == Leakage("x", 1, 4, exact=0.25, near=0.5)
    assert measure_leakage([], "none") == Leakage("none", 0, 0, 0.0, 0.0)
    # per source, against the training text of every source
    other = [Document("Left knee pain!", "y:1", "y", group=ev), *docs]
    by = leakage_by(other)
    assert by["x"] == measure_leakage(docs, "x")
    assert by["y"] == Leakage("y", 0, 1, exact=0.0, near=1.0)
