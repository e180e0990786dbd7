"""Fixtures of the cache tests."""

from __future__ import annotations

import pytest

from sae_med.corpora import registry


@pytest.fixture
def long_recipes(tmp_path, monkeypatch):
    """Twelve local documents of 4 to 36 medical definitions each (many tokens past a short
    context) in ``tmp_path / "recipes"``, for a config's ``corpora:``; the registry, the
    corpus statistics' cache and the working folder are this test's own."""
    words = registry.iter_documents("medical", "train")
    (tmp_path / "recipes").mkdir()
    for i in range(12):  # 4 to 36 definitions long: many tokens past a short context
        text = " ".join(next(words).text for _ in range(4 + 8 * (i % 5)))
        (tmp_path / "recipes" / f"r{i}.txt").write_text(text)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setenv("SAE_MED_CACHE", str(tmp_path / "sae_med_cache"))  # its own stats
    monkeypatch.chdir(tmp_path)
    return tmp_path / "recipes"
