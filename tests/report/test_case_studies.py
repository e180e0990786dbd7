"""Chapter 5's tables and figures on planted cases: the alignment shares, the case-study
and split tables' windows, the match and absorption figures."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sae_med.cache.activations import TokenInfo
from sae_med.interpret.features import (
    Alignment,
    DictionaryMatch,
    LatentActs,
    best_concept_latents,
    largest_split,
)
from sae_med.report.case_studies import (
    absorption_figure,
    aligned_share,
    alignment_figure,
    alignment_table,
    best_aligned_table,
    case_study_table,
    match_figures,
    match_kinds,
    new_latents_table,
    split_table,
)
from sae_med.sae.jumprelu import JumpReLUSAE


class Tokens:
    """A stand-in tokenizer: token id t decodes to ``t{t} ``."""

    def decode(self, ids):
        return "".join(f"t{int(i)} " for i in ids)


class Cache:
    """A stand-in cache of 3 documents of 4 tokens (token id = row)."""

    def tokens(self):
        rows = torch.arange(12)
        return TokenInfo(rows, rows // 4, rows % 4)


def _acts() -> LatentActs:
    """Latent 0 fires on rows 1 (0.5) and 9 (2.0), latent 1 on row 6 (1.0)."""
    return LatentActs(torch.tensor([1, 9, 6]), torch.tensor([0, 0, 1]),
                      torch.tensor([0.5, 2.0, 1.0]), 12, 3)


def _alignment() -> Alignment:
    return Alignment(["x", "y", "z", "x"], torch.tensor([0.95, 0.5, 0.91, 0.7]),
                     torch.tensor([0.8, 0.1, 0.4, 0.6]), ["x", "y", "z"], [4, 4, 4])


def test_alignment_shares_table_and_figure():
    al = _alignment()
    assert aligned_share(al, 0.9) == 0.5
    table = alignment_table({"medical": al}, 0.9)
    assert table.iloc[0].to_dict() == {"SAE": "medical", "share AUROC ≥ 0.9": 0.5,
                                       "median AUROC": pytest.approx(0.7),
                                       "share F1 ≥ 0.5": 0.5}
    assert best_aligned_table(al, k=2).latent.tolist() == [0, 2]
    fig = alignment_figure({"medical": al, "broad": al}, 0.9, 20)
    assert [t.name for t in fig.data] == ["SAE trained on medical", "SAE trained on broad"]
    assert "3 concepts" in fig.layout.title.text


def test_case_study_and_split_tables_show_each_latents_windows():
    sae = JumpReLUSAE(4, 3, generator=torch.Generator().manual_seed(0))
    unembed = torch.eye(4)  # logit lens: the decoder row itself, token i = coordinate i
    acts = {"medical": _acts(), "broad": _acts()}
    found = best_concept_latents({"medical": torch.tensor([[1.0, 0, 0], [0, 0, 0]])},
                                 [{"chapter": ("X",)}, {}], "chapter:X")
    table = case_study_table(found, {"medical": sae}, acts, Cache(), Tokens(), unembed,
                             k_windows=2, k_tokens=1)
    row = table.iloc[0]
    assert (row.SAE, row.latent) == ("medical", 0)
    # strongest first, one per document, the peak marked, within its document
    assert row["top windows"] == "t8 «t9 »t10 t11  ⏎ t0 «t1 »t2 t3 "
    assert row["logit lens (top)"] == f"t{int(sae.W_dec[0].argmax())} "

    m = DictionaryMatch(torch.tensor([1, 1, 2]), torch.tensor([0.6, 0.5, 0.1]),
                        ["split", "split", "new"], torch.tensor([1, 0, 2]),
                        torch.tensor([0.9, 0.2, 0.0]))
    split = largest_split(m)
    table = split_table(split, m, acts, Cache(), Tokens(), "medical", "broad", k_windows=1)
    assert table[["SAE", "latent"]].values.tolist() == [["broad", 1], ["medical", 0],
                                                        ["medical", 1]]
    assert table.cosine.tolist() == pytest.approx([1.0, 0.6, 0.5])
    assert table["top windows"].tolist()[1] == "t8 «t9 »t10 t11 "
    assert match_kinds(m).to_dict() == {"shared": 0, "split": 2, "related": 0, "new": 1}
    classes, best = match_figures(m, torch.tensor([True, True, False]), 20)
    assert list(classes.data[0].y) == [0, 2, 0, 1] and len(best.data) == 2
    al = Alignment(["a", "b", "c"], torch.tensor([0.2, 0.5, 0.9]), torch.zeros(3),
                   ["a", "b", "c"], [1, 1, 1])
    assert new_latents_table(al, m).latent.tolist() == [2]


def test_absorption_figure_has_a_trace_per_sae():
    df = pd.DataFrame({"parent": ["P"], "parent_auroc": [0.8], "absorption_rate": [0.25]})
    fig = absorption_figure({"medical": df, "broad": df})
    assert [t.name for t in fig.data] == ["SAE trained on medical", "SAE trained on broad"]
    assert list(fig.data[0].y) == [0.25]
