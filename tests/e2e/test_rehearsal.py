"""The paper's path rehearsed offline (``make rehearse-paper``): configs/paper_gemma2_2b.yaml
with a tiny random Gemma-2 in a local folder, local files in the hub datasets' schemas and
CPU-sized token counts (tests/rehearsal.py) runs every stage the real run does — streamed
training of both families at the paper's width and targets, their evaluation on both
corpora, and a Gemma Scope params.npz baseline scored through ``sae-med evaluate --sae``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from sae_med import cli
from sae_med.config import load_config
from sae_med.corpora.hub import LOCAL_FILES_ENV
from sae_med.experiment import run_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Rehearsal:
    work: Path
    model_dir: Path
    hub_files: Path
    overrides: list[str]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    from rehearsal import GEMMA2_2B_BLOCKS, rehearsal_overrides, write_hub_files
    from tiny_lms import save_tiny_lm

    work = tmp_path_factory.mktemp("rehearsal")
    model_dir = save_tiny_lm(work / "gemma-2-tiny", "gemma2", layers=GEMMA2_2B_BLOCKS)
    return Rehearsal(work, model_dir, write_hub_files(work / "hub"),
                     rehearsal_overrides(model_dir, work))


def test_paper_run_rehearsed_offline(rehearsal, monkeypatch, capsys):
    from rehearsal import PAPER_CONFIG, write_gemma_scope_npz

    from sae_med.sae.io import from_gemma_scope_npz, save_gemma_scope_2

    monkeypatch.setenv(LOCAL_FILES_ENV, str(rehearsal.hub_files))
    npz = write_gemma_scope_npz(rehearsal.work / "gemma-scope-2b-pt-res" / "layer_20" /
                                "width_16k" / "average_l0_71" / "params.npz", 32, 16384)
    # the same weights as a Gemma Scope 2 folder, scored by the run as a config baseline
    gs2 = save_gemma_scope_2(from_gemma_scope_npz(npz), rehearsal.work / "gs2" / "layer_20",
                             "google/gemma-2-2b", 20)
    cfg = load_config(PAPER_CONFIG, [*rehearsal.overrides, f"baselines={{gs2: {{sae: {gs2}}}}}"])
    paper = load_config(PAPER_CONFIG)
    assert (cfg.model.hook_layer, cfg.sae, cfg.cache, cfg.train.source) == \
        (paper.model.hook_layer, paper.sae, paper.cache, "stream")

    rows = json.loads(run_experiment(cfg, progress=False).read_text())["rows"]
    pairs = {(t, e) for t in paper.train_corpora for e in paper.eval_corpora}
    ours = [r for r in rows if r["train_corpus"] != "external"]
    assert {(r["train_corpus"], r["eval_corpus"]) for r in ours} == pairs
    assert len(ours) == len(pairs) * len(paper.sae.l0_targets)
    scored_gs2 = {r["eval_corpus"]: r for r in rows if r["sae_id"] == "baseline/gs2"}
    assert set(scored_gs2) == set(paper.eval_corpora)
    assert all(r["sae_format"] == "gemma_scope_2" for r in scored_gs2.values())
    for r in rows:
        assert r["d_sae"] == 16384 and r["d_model"] == 32
        assert r["metrics"]["ce_clean"]["value"] > 0 and r["ce_tokens"] > 0
    # streamed training wrote no training cache: only the held-out splits are cached
    splits = [json.loads(p.read_text())["split"]
              for p in (cfg.cache_path / "activations").glob("*/spec.json")]
    assert sorted(splits) == ["eval", "eval"]

    out = rehearsal.work / "baseline.json"
    assert cli.main(["evaluate", PAPER_CONFIG, *rehearsal.overrides, "--sae", str(npz),
                     "--sae-id", "gemma_scope/l0_71", "--out", str(out)]) == 0
    assert f"results={out}" in capsys.readouterr().out
    baseline = json.loads(out.read_text())["rows"]
    assert {(r["sae_id"], r["eval_corpus"]) for r in baseline} == \
        {("gemma_scope/l0_71", e) for e in paper.eval_corpora}
    # the config baseline (Gemma Scope 2 files) scored what the npz scores on the same tokens
    for r in baseline:
        for metric in ("fve", "l0", "delta_ce"):
            assert scored_gs2[r["eval_corpus"]]["metrics"][metric]["value"] == \
                pytest.approx(r["metrics"][metric]["value"], rel=1e-5, abs=1e-6)
