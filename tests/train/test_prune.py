"""Tests for sae_med.train.prune: finished sweeps lose their checkpoints and are still
reused; unfinished and training sweeps keep theirs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from tiny_train import synthetic_acts, tiny_config

from sae_med.artifacts import artifact_lock, file_sha256
from sae_med.cache.batches import TensorBatchSource
from sae_med.cli import main
from sae_med.layout import CFG_FILENAME, CHECKPOINT_NAME, CONFIG_NAME, RUN_LOCK_NAME, sae_dirname
from sae_med.train.prune import CHECKPOINT_FILES, prune_checkpoints, sweep_finished_on_disk
from sae_med.train.sweep import SavedRun, finished_results, saved_run, train_saes

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three finished tiny sweeps (a module's worth of training, shared)."""
    root = tmp_path_factory.mktemp("prune")
    cfg, src = tiny_config(), TensorBatchSource(synthetic_acts())
    for name in ("done", "longer", "busy"):
        train_saes(cfg, src, root / name, progress=False)
    return root, cfg, src


def _saes(sweep, cfg):
    return {t: file_sha256(sweep / sae_dirname(t) / "sae.safetensors")
            for t in cfg.sae.l0_targets}


def test_prune_keeps_unfinished_and_training_sweeps(trained):
    root, cfg, src = trained
    # "longer": its config now asks for more steps than its SAEs were trained for
    more = dataclasses.replace(cfg.train, n_tokens=2 * cfg.train.n_tokens)
    (root / "longer" / CONFIG_NAME).write_text(json.dumps(
        dataclasses.replace(cfg, train=more).to_dict()))
    before = _saes(root / "done", cfg)
    assert all(sweep_finished_on_disk(root / n) for n in ("done", "busy"))
    assert not sweep_finished_on_disk(root / "longer")
    with artifact_lock(root / "busy" / RUN_LOCK_NAME, "a training run"):
        pruned = prune_checkpoints([root, root / "absent"])
    assert pruned.removed == (root / "done",)
    assert set(pruned.kept) == {root / "longer", root / "busy"}
    assert pruned.freed_bytes > 8 * sum(
        (root / "done" / sae_dirname(t) / "sae.safetensors").stat().st_size
        for t in cfg.sae.l0_targets) / 2  # two checkpoints of weights and Adam's moments
    assert not any((root / "done" / n).exists() for n in CHECKPOINT_FILES)
    assert all((root / n / CHECKPOINT_NAME).exists() for n in ("longer", "busy"))
    # the pruned sweep is still finished and reused: same SAEs, no checkpoint written again
    assert finished_results(cfg, src, root / "done") is not None
    results = train_saes(cfg, src, root / "done", resume=True, progress=False)
    assert [r.steps for r in results] == [40, 40]
    assert _saes(root / "done", cfg) == before
    assert not (root / "done" / CHECKPOINT_NAME).exists()


def test_prune_command_prunes_the_configs_runs(trained, tmp_path, capsys):
    _, cfg, src = trained
    run = tmp_path / "tiny"
    sweep = run / "saes" / "medical" / "seed_0"
    train_saes(cfg, src, sweep, progress=False)
    assert main(["prune", "configs/smoke.yaml", f"output_dir={tmp_path}", "name=tiny"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"run={run}"
    assert out[-2].startswith("removed the checkpoints of 1 finished sweeps (")
    assert not (sweep / CHECKPOINT_NAME).exists() and _saes(sweep, cfg)


def test_saved_run_needs_one_run_for_every_sae(tmp_path):
    def sae(name, **meta):
        d = tmp_path / name
        d.mkdir()
        (d / CFG_FILENAME).write_text(json.dumps({"metadata": meta}))
        return d

    a, b = sae("a", run_key="k", steps=40), sae("b", run_key="k", steps=40)
    assert saved_run([a, b]) == SavedRun("k", 40)
    assert saved_run([a, sae("other_key", run_key="j", steps=40)]) is None
    assert saved_run([a, sae("other_steps", run_key="k", steps=20)]) is None
    assert saved_run([a, tmp_path / "unsaved"]) is None
