"""Every SAE architecture through the whole pipeline (cache → train → evaluate) on a tiny
random checkpoint, and configs/matrix.yaml's runs at that size: each architecture's SAEs are
loaded as what they are and scored like the JumpReLU ones (issue 32's matrix)."""

from __future__ import annotations

import json
import math

import pytest

from sae_med.config import SAE_ARCHITECTURES, load_config
from sae_med.experiment import run_experiment
from sae_med.layout import RESULTS_NAME
from sae_med.report.matrix import matrix_cells, matrix_configs, read_matrix, verdict_table

LAYER = 1
TARGET = 4
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")
TRAIN_TOKENS = 256 * 256
"""256 steps: BatchTopK's inference threshold is an EMA of rate 0.01 from 0, at 92% of its
level by then (16 steps left it at 15%, and L0 at 6x k)."""


def tiny_overrides(model_dir, tmp_path) -> list[str]:
    """configs/smoke.yaml at the tiny checkpoint's size (as the any-architecture pipeline
    test in tests/lm/test_model_architectures.py runs it)."""
    return [f"model.name={model_dir}", f"model.hook_layer={LAYER}",
            f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
            "learning_curve={}", "cache.n_tokens=1024", "cache.shard_tokens=512",
            "sae.width=64", f"sae.l0_targets=[{TARGET}]", f"train.n_tokens={TRAIN_TOKENS}",
            "train.batch_size=256", "eval.n_tokens=512", "eval.ce_docs=4", "eval.bootstrap=10"]


def check_rows(rows: list[dict], arch: str, at_k: bool = True) -> None:
    """Every row scored: finite FVE and ΔCE with intervals, and (``at_k``) the TopK family
    at its k."""
    assert rows
    for r in rows:
        m = r["metrics"]
        for name in ("fve", "fve_typical", "delta_ce"):
            assert math.isfinite(m[name]["value"]), (arch, r["sae_id"], name)
            assert m[name]["low"] <= m[name]["value"] <= m[name]["high"], (arch, name)
        assert r["dark_matter"].get("r2_error_mean") is not None, (arch, r["dark_matter"])
        if not at_k:
            continue
        if arch == "topk":  # k per token, exactly
            assert m["l0"]["value"] == pytest.approx(TARGET), r["sae_id"]
        elif arch in TOPK_FAMILY:  # the inference threshold of k per token over a batch
            assert 0.5 * TARGET <= m["l0"]["value"] <= 2 * TARGET, (arch, m["l0"]["value"])


@pytest.mark.parametrize("arch", SAE_ARCHITECTURES)
def test_experiment_scores_every_architecture(tiny_lm_dirs, tmp_path, arch):
    cfg = load_config("configs/smoke.yaml", [
        *tiny_overrides(tiny_lm_dirs["llama"], tmp_path), "replications={}",
        "train_corpora=[medical]", "eval_corpora=[medical]", f"sae.architecture={arch}"])
    doc = json.loads(run_experiment(cfg, progress=False).read_text())
    assert [r["sae_id"] for r in doc["rows"]] == [f"medical/seed_0/l0_{TARGET}"]
    saved = json.loads((cfg.run_path / "saes/medical/seed_0/l0_4/cfg.json").read_text())
    assert saved["architecture"] == arch
    check_rows(doc["rows"], arch)


def test_matrix_config_runs_every_cell_and_prints_its_table(tiny_lm_dirs, tmp_path):
    """configs/matrix.yaml at the tiny checkpoints' size: both models (tiny gemma2 and
    llama for Gemma and SmolLM2), five architectures, the three training corpora; every
    cell run evaluated, and the table reads them all."""
    base = load_config("configs/matrix.yaml")
    smol = [n for n, c in base.replication_configs().items()
            if c.model.name != base.model.name]
    cfg = load_config("configs/matrix.yaml", [
        # ce_tokens: smoke.yaml's 0 (default.yaml's 4,096 cost minutes over a 262k vocabulary)
        *tiny_overrides(tiny_lm_dirs["gemma2"], tmp_path), "train.n_tokens=4096",
        "eval.ce_tokens=0", "sae.seeds=1", "eval_corpora=[medical]", "train.workers=1",
        *(o for n in smol for o in (f"replications.{n}.model.name={tiny_lm_dirs['llama']}",
                                    f"replications.{n}.model.hook_layer={LAYER}",
                                    f"replications.{n}.sae.width=64"))])
    run_experiment(cfg, progress=False)
    runs = read_matrix(cfg)
    assert {(r.architecture, r.model.split(" ")[0].rsplit("/", 1)[-1]) for r in runs} == {
        (a, m) for a in SAE_ARCHITECTURES for m in ("gemma2", "llama")}
    for r, c in zip(runs, matrix_configs(cfg), strict=True):
        doc = json.loads((c.run_path / RESULTS_NAME).read_text())
        assert {row["train_corpus"] for row in doc["rows"]} == {"medical", "broad", "mixed_10"}
        check_rows(doc["rows"], r.architecture, at_k=False)  # 16 steps: no threshold yet
    cells = matrix_cells(runs)
    assert len(cells) == 10 * 2 * 3 and all(c.gaps for c in cells)
    assert {c.verdict for c in cells} <= {"holds", "reverses", "fails", "not judged"}
    assert len(verdict_table(cells)) == 5 * 2
