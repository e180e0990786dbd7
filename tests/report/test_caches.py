"""Chapter 1's tables and figure on stand-in caches: one row per cache with its corpus's
description, tokens per split, the norms of one split and their histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_med.corpora.registry import corpus_info
from sae_med.report.caches import (
    activation_norms,
    cache_table,
    norm_figure,
    norm_table,
    split_tokens,
)


class Cache:
    """A stand-in cache of ``n_docs`` documents whose activations are the rows given."""

    def __init__(self, rows: list[list[float]], n_docs: int, key: str):
        self.rows, self.n_docs, self.key = torch.tensor(rows), n_docs, key
        self.n_tokens = len(rows)

    def doc_ids(self):
        return [f"doc {i}" for i in range(self.n_docs)]

    def activations(self):
        return self.rows


CACHES = {("medical", "train"): Cache([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]], 2, "k1"),
          ("medical", "eval"): Cache([[1.0, 0.0]], 1, "k2"),
          ("broad", "train"): Cache([[0.0, 2.0], [0.0, 2.0]], 0, "k3")}


def test_the_cache_table_has_a_row_per_cache():
    table = cache_table(CACHES)
    assert table[["corpus", "split", "documents", "tokens", "tokens per document"]
                 ].values.tolist() == [["medical", "train", 2, 3, 1.5],
                                       ["medical", "eval", 1, 1, 1.0],
                                       ["broad", "train", 0, 2, 2.0]]  # no document: 2/1
    assert table.description[0] == corpus_info("medical").description
    assert table.domain[2] == corpus_info("broad").domain
    assert table["cache key"].tolist() == ["k1", "k2", "k3"]
    assert split_tokens(table, "train") == 5 and split_tokens(table, "eval") == 1


def test_norms_of_one_split_their_table_and_histogram():
    norms = activation_norms(CACHES, "train")
    assert list(norms) == ["medical", "broad"]
    np.testing.assert_allclose(norms["medical"], [5.0, 1.0, 10.0])
    table = norm_table(norms)
    assert table.iloc[0].tolist() == ["medical", pytest.approx(16 / 3), 5.0, 10.0]
    assert table.iloc[1].tolist() == ["broad", 2.0, 2.0, 2.0]
    fig = norm_figure(norms, "blocks.3.hook_resid_post", "train")
    assert [t.name for t in fig.data] == ["medical", "broad"]
    assert fig.layout.title.text == "‖x‖ at blocks.3.hook_resid_post (train split)"
    assert fig.layout.yaxis.type == "log" and fig.layout.barmode == "overlay"
