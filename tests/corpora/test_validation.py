"""The validation part carved out of a training split: whole groups, deterministic by seed,
independent of the split."""

from __future__ import annotations

import pytest

from sae_med.corpora.documents import Document, in_validation, split_of

GROUPS = [f"icd:C{i:03d}" for i in range(4000)]


def test_whole_groups_at_about_the_share_and_the_same_carving_for_the_same_seed():
    docs = [Document(f"text {g} {k}", f"{g}:{k}", "icd", group=g) for g in GROUPS[:500]
            for k in range(3)]
    by_group: dict[str, set[bool]] = {}
    for d in docs:
        by_group.setdefault(d.group_key, set()).add(in_validation(d.group_key, 0.2, seed=3))
    assert all(len(sides) == 1 for sides in by_group.values())  # no group straddles
    share = sum(in_validation(g, 0.2, seed=3) for g in GROUPS) / len(GROUPS)
    assert 0.18 < share < 0.22
    assert [in_validation(g, 0.2, 3) for g in GROUPS] == [in_validation(g, 0.2, 3)
                                                         for g in GROUPS]


def test_another_seed_carves_another_part_independent_of_the_split():
    a = {g for g in GROUPS if in_validation(g, 0.2, seed=0)}
    b = {g for g in GROUPS if in_validation(g, 0.2, seed=1)}
    assert a != b and 0.1 < len(a & b) / len(a) < 0.3  # overlap ~ the share: independent
    train = [g for g in GROUPS if split_of(g) == "train"]
    share = sum(in_validation(g, 0.2) for g in train) / len(train)
    assert 0.17 < share < 0.23  # the split does not bias the carving


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1])
def test_a_share_outside_zero_one_is_refused(frac):
    with pytest.raises(ValueError, match="validation share"):
        in_validation("g", frac)
