"""Autointerp over a training corpus's seed replicates: the latent budget spread over the
seeds' SAEs, each row's seed recorded, and latent tables from before the column read as
one seed. Real cache, model and SAEs; a deterministic judge behind the real chat cache."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from quantile_saes import quantile_sae

from sae_med.config import AutointerpConfig, load_config
from sae_med.interpret.autointerp import (
    METRICS,
    REPLICATE,
    RunScores,
    compare_scores,
    interpret_sae,
    pick_latents,
    replicates_of,
    score_saes,
    split_latents,
    write_run_scores,
)
from sae_med.interpret.chat import CachedChat
from sae_med.interpret.features import encode_cache

BUDGET = AutointerpConfig(n_latents=5, n_windows=3, n_score=2, max_new_tokens=24,
                          max_retries=0, fuzzing=False)


class Judge:
    """A deterministic in-process judge: one fixed explanation, and a p(yes) and an
    answer that depend only on the question's text."""

    ident, params = "judge", {}

    def chat(self, messages, max_new_tokens=None) -> str:
        text = messages[-1]["content"]
        if "what does the neuron detect" in text:
            return "words about medicine"
        return "yes" if len(text) % 2 else "no"

    def p_yes(self, messages):
        return (len(messages[-1]["content"]) % 97) / 97


@pytest.fixture(scope="module")
def scored(small_medical_cache, model, tmp_path_factory):
    cache = small_medical_cache
    # random SAEs whose latents each fire on about 10% of the cache's tokens
    saes = {"medical": [quantile_sae(cache, 64, 0.9, s) for s in (0, 1, 2)],
            "broad": [quantile_sae(cache, 64, 0.9, 3)]}
    chat = CachedChat(Judge(), tmp_path_factory.mktemp("chat") / "llm.jsonl")
    return saes, score_saes(saes, cache, model, chat, BUDGET, progress=False)


def test_split_latents():
    assert split_latents(5, 3) == [2, 2, 1]
    assert split_latents(2, 3) == [1, 1, 0]
    assert split_latents(6, 1) == [6]
    with pytest.raises(ValueError, match="0 seed replicates"):
        split_latents(4, 0)


def test_latents_are_spread_over_the_seeds_and_recorded(scored, small_medical_cache, model):
    saes, scores = scored
    cache, min_docs = small_medical_cache, BUDGET.n_windows + BUDGET.n_score
    medical = scores["medical"]
    # the budget is the same as one seed's: n_latents in all, split 2 + 2 + 1
    assert len(medical) == BUDGET.n_latents
    assert medical[REPLICATE].value_counts().sort_index().tolist() == [2, 2, 1]
    for r, sae in enumerate(saes["medical"]):
        rows = medical[medical[REPLICATE] == r]
        acts = encode_cache(sae, cache, progress=False)
        # each seed's latents are picked the way one seed's always were, on its own SAE
        assert rows["latent"].tolist() == pick_latents(acts, cache, len(rows), min_docs,
                                                       BUDGET.seed)
        # and scored on that seed's SAE: its firing rates, not another seed's
        rates = acts.firing_rate()
        assert rows["firing_rate"].tolist() == pytest.approx(
            [float(rates[j]) for j in rows["latent"]])
    assert medical["detection_auroc"].notna().all()


def test_one_seed_scores_what_interpret_sae_always_did(scored, small_medical_cache, model):
    saes, scores = scored
    cache = small_medical_cache
    sae = saes["broad"][0]
    alone = interpret_sae(sae, encode_cache(sae, cache, progress=False), cache,
                          model.tokenizer, model.W_U.cpu(),
                          Judge(), BUDGET, progress=False)
    broad = scores["broad"]
    assert broad[REPLICATE].eq(0).all()
    assert broad.drop(columns=REPLICATE).equals(alone)


def test_the_written_table_keeps_the_seed_and_old_tables_read_as_one(scored, tmp_path):
    _, scores = scored
    cfg = load_config(None, [f"output_dir={tmp_path}", "eval.bootstrap=200"])
    budget = dataclasses.replace(BUDGET, demo=False)
    out = write_run_scores(cfg, RunScores(scores, {"medical": 20.0, "broad": 20.0}, 20.0,
                                          "medical", budget))
    latents = pd.read_csv(out / "latents.csv", keep_default_na=False)
    assert latents.groupby("sae")[REPLICATE].apply(sorted).to_dict() == {
        "medical": [0, 0, 1, 1, 2], "broad": [0] * 5}
    written = pd.read_csv(out / "comparison.csv")
    auroc = written[written.metric == "detection_auroc"].drop(columns="metric")
    fresh = compare_scores(scores, "detection_auroc", 200, cfg.seed)
    assert auroc[["mean", "ci_low", "ci_high"]].to_numpy() == pytest.approx(
        fresh[["mean", "ci_low", "ci_high"]].to_numpy())
    # a latents.csv without the column (written before seeds were spread) is one seed
    old = {n: f.drop(columns=REPLICATE) for n, f in scores.items()}
    assert replicates_of(old["medical"]).tolist() == [0] * 5
    one_seed = {n: f.assign(**{REPLICATE: 0}) for n, f in scores.items()}
    for m in METRICS:
        assert compare_scores(old, m, 200, 0).equals(compare_scores(one_seed, m, 200, 0))
