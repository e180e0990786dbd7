"""configs/width.yaml at a tiny checkpoint's size (d_model 32, so widths 64 to 1,024): every
cell run is cached, trained and scored by sae-med's experiment, and the width report reads
all ten with gaps at every width, a crossover and a slope test per architecture. Slow: ten
runs, each scoring spliced CE over the tiny model's 262k-token vocabulary, take minutes;
configs/width.yaml's cells and their reuse of the default's and the matrix's runs are
checked fast in tests/report/test_width.py."""

from __future__ import annotations

import math

import pytest

from sae_med.config import load_config
from sae_med.experiment import run_experiment
from sae_med.report.matrix import matrix_configs
from sae_med.report.width import (
    WIDTH_TARGET,
    family_table,
    read_widths,
    width_families,
    width_series,
)

D_MODEL = 32


@pytest.mark.slow
def test_width_config_runs_every_cell_and_reads_every_width(tiny_lm_dirs, tmp_path):
    base = load_config("configs/width.yaml")
    widths = {n: c.sae.width * D_MODEL // 640 for n, c in base.replication_configs().items()}
    cfg = load_config("configs/width.yaml", [
        f"model.name={tiny_lm_dirs['llama']}", "model.hook_layer=1",
        f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs'}",
        "learning_curve={}", "cache.n_tokens=1024", "cache.shard_tokens=512",
        "train.n_tokens=2048", "train.batch_size=256", "train.workers=1",
        "eval.n_tokens=512", "eval.ce_docs=2", "eval.ce_tokens=0", "eval.bootstrap=10",
        "sae.seeds=1", "eval_corpora=[medical]", f"sae.width={2 * D_MODEL}",
        *(f"replications.{n}.sae.width={w}" for n, w in widths.items())])
    run_experiment(cfg, progress=False)
    runs = read_widths(cfg)
    assert len(runs) == len(matrix_configs(cfg)) == 10
    assert {(r.architecture, r.multiple) for r in runs} == {
        (a, m) for a in ("jumprelu", "matryoshka_batchtopk") for m in (2, 4, 8, 16, 32)}
    families = width_families(runs)
    assert set(families.train_corpus) == {"medical", "broad", "mixed_10"}
    assert families.value.map(math.isfinite).all() and len(family_table(families)) == 2 * 2 * 3
    for s in width_series(runs):
        assert sorted(s.gaps) == [2, 4, 8, 16, 32], (s.architecture, s.versus, s.metric)
        assert s.crossover.status and s.trend.verdict
    assert all(WIDTH_TARGET in c.sae.l0_targets for c in matrix_configs(cfg))
