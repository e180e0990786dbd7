"""Several runs' sweeps from one pass over the activations (:func:`train_sweeps`): every
run's folder holds the files its own sweep writes, bit for bit, fresh or resumed; and a
one-run sweep writes what it wrote before the pass could be shared."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from tiny_train import synthetic_acts, tiny_config

from sae_med.cache.batches import BatchSource, TensorBatchSource
from sae_med.config import Config, load_config
from sae_med.train.records import TrainingError
from sae_med.train.schedule import batch_seed
from sae_med.train.sweep import SweepRun, train_saes, train_sweeps

# seeding comes from conftest's autouse fixture
pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS, REPLICATE = "medical", 1

DIGESTS_586A1C7 = {
    "jumprelu": {
        "checkpoint.json": "4b1ef32a339ab4b3", "checkpoint.prev.pt": "40b37892018403a4",
        "checkpoint.pt": "40b37892018403a4", "config.json": "01a6ac904cf8bfa7",
        "l0_4/cfg.json": "87ca9b409c703731", "l0_4/config.json": "01a6ac904cf8bfa7",
        "l0_4/metrics.jsonl": "e9d4f0ea052b8338", "l0_4/sae.safetensors": "2c519fcd7861bcea",
        "l0_4/snapshots/tokens_640/cfg.json": "293a6157183768ff",
        "l0_4/snapshots/tokens_640/config.json": "01a6ac904cf8bfa7",
        "l0_4/snapshots/tokens_640/sae.safetensors": "5c8257e575f37862",
        "l0_8/cfg.json": "3e0fcf3bb8b754b0", "l0_8/config.json": "01a6ac904cf8bfa7",
        "l0_8/metrics.jsonl": "e26c467f03c733d2", "l0_8/sae.safetensors": "2be8f25772f366b5",
        "l0_8/snapshots/tokens_640/cfg.json": "94982e1c9daab180",
        "l0_8/snapshots/tokens_640/config.json": "01a6ac904cf8bfa7",
        "l0_8/snapshots/tokens_640/sae.safetensors": "a0e4bdeb8cf80e7d"},
    "topk": {
        "checkpoint.json": "b58ae0972e7fed25", "checkpoint.prev.pt": "984642b779de31ee",
        "checkpoint.pt": "984642b779de31ee", "config.json": "88bcf7daa5d432d4",
        "l0_4/cfg.json": "169846b6d021a1a2", "l0_4/config.json": "88bcf7daa5d432d4",
        "l0_4/metrics.jsonl": "aee605d8bd0eaa49", "l0_4/sae.safetensors": "8b3239c55626a468",
        "l0_4/snapshots/tokens_640/cfg.json": "597e816a5def57b4",
        "l0_4/snapshots/tokens_640/config.json": "88bcf7daa5d432d4",
        "l0_4/snapshots/tokens_640/sae.safetensors": "388db462c372364b",
        "l0_8/cfg.json": "865ebd3bdab0696b", "l0_8/config.json": "88bcf7daa5d432d4",
        "l0_8/metrics.jsonl": "d0c3479efd58acaa", "l0_8/sae.safetensors": "2115ae46612bc5f7",
        "l0_8/snapshots/tokens_640/cfg.json": "568ae8529f0dd5f1",
        "l0_8/snapshots/tokens_640/config.json": "88bcf7daa5d432d4",
        "l0_8/snapshots/tokens_640/sae.safetensors": "880b3c674d1d3ed2"}}
"""sha256 prefixes of every file of :func:`_cfg`'s one-run sweeps, written by the trainer
before :func:`train_sweeps` existed (commit 586a1c7; 2c3437b added the shared pass on its
descendant 0002724, which trains alike), one torch thread, seed 0 (a change that means to
alter training updates them)."""

BEFORE = {
    "AVX2": {"torch": "2.13.0+cpu", "digests": DIGESTS_586A1C7},
    "AVX512": {"torch": "2.13.0+cpu", "digests": DIGESTS_586A1C7},
}
""":data:`DIGESTS_586A1C7` per ``torch.backends.cpu.get_cpu_capability()``, each made by
running the 586a1c7 trainer on such a CPU. AVX2: recorded with 2c3437b, on an AVX2-only
CPU. AVX512: recorded 2026-12-07 on a 2-core AMD EPYC (AVX-512), from a worktree of 586a1c7
(and again of 0002724) through this module's :func:`_cfg`, :func:`_digests` and
``train_saes`` call under the worktree's own conftest and tiny_train; every digest came out
equal to AVX2's, so both records name one table. A capability with no record skips."""


def _cfg(arch: str, **sae: object) -> Config:
    """40 steps of 32 rows, a checkpoint every 10, a snapshot at step 20, AuxK after 10."""
    cfg = tiny_config(snapshot_tokens=(32 * 20,), dead_window_tokens=320)
    return dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, architecture=arch,
                                                            **sae))


def _digests(folder: Path, checkpoints: bool = True) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".train.lock"
            and (checkpoints or not p.name.startswith("checkpoint"))}


def _same(a: object, b: object) -> bool:
    """Equal checkpoint contents: the same keys, and tensors equal to the bit."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


class _Killed(TensorBatchSource):
    """The synthetic activations, failing when training batch ``at`` is asked for (a run
    killed mid-way; the norm and threshold batches come in other orders)."""

    def __init__(self, acts: torch.Tensor, at: int):
        super().__init__(acts)
        self.at = at

    def iter_batches(self, batch_size, seed, start_batch=0):
        for i, b in enumerate(super().iter_batches(batch_size, seed, start_batch),
                              start=start_batch):
            if i == self.at and seed == batch_seed(3, REPLICATE):
                raise KeyboardInterrupt("killed")
            yield b


def _alone(cfg: Config, out: Path, source: BatchSource | None = None) -> dict[str, str]:
    train_saes(cfg, source or TensorBatchSource(synthetic_acts()), out, progress=False,
               train_corpus=CORPUS, replicate=REPLICATE)
    return _digests(out)


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
def test_one_run_sweep_writes_what_it_wrote_before(arch, tmp_path):
    cpu = torch.backends.cpu.get_cpu_capability()
    record = BEFORE.get(cpu)
    if record is None or record["torch"] != torch.__version__:
        records = ", ".join(f"{c} ({r['torch']})" for c, r in BEFORE.items())
        pytest.skip(f"no digests recorded with torch {torch.__version__} on {cpu}, only "
                    f"{records}")
    assert _alone(_cfg(arch), tmp_path / "run") == record["digests"][arch]


RUNS = {"jumprelu": {}, "topk": {"width": 32, "l0_targets": (2.0,)}, "relu": {},
        "matryoshka_batchtopk": {}}
"""The runs sharing a pass: an SAE section may differ in anything, width and targets too."""


def test_shared_pass_writes_each_runs_own_files(tmp_path):
    cfgs = [_cfg(a, **sae) for a, sae in RUNS.items()]
    alone = [_alone(c, tmp_path / "alone" / c.sae.architecture) for c in cfgs]
    runs = [SweepRun(c, tmp_path / "shared" / c.sae.architecture) for c in cfgs]
    results = train_sweeps(runs, TensorBatchSource(synthetic_acts()), CORPUS, REPLICATE,
                           progress=False)
    assert [_digests(r.out_dir) for r in runs] == alone
    assert [[r.l0_target for r in rs] for rs in results] == [list(c.sae.l0_targets)
                                                             for c in cfgs]


def test_shared_pass_resumes_runs_from_where_each_stopped(tmp_path):
    """One run finished, one killed at batch 25 (checkpoint at 20), one never started: the
    pass starts at step 20, steps the fresh run from 0 meanwhile, reuses the finished
    one, and every folder ends as an uninterrupted run alone leaves it (the resumed
    checkpoint's pickle is laid out differently, as a resumed run's alone is: its
    contents are compared)."""
    done, cut, fresh = (_cfg(a) for a in ("jumprelu", "topk", "relu"))
    alone = [tmp_path / "alone" / c.sae.architecture for c in (done, cut, fresh)]
    for c, out in zip((done, cut, fresh), alone, strict=True):
        _alone(c, out)
    runs = [SweepRun(c, tmp_path / "shared" / c.sae.architecture) for c in (done, cut, fresh)]
    _alone(done, runs[0].out_dir)
    with pytest.raises(KeyboardInterrupt):
        _alone(cut, runs[1].out_dir, _Killed(synthetic_acts(), at=25))
    train_sweeps(runs, TensorBatchSource(synthetic_acts()), CORPUS, REPLICATE, resume=True,
                 progress=False)
    for r, out in zip(runs, alone, strict=True):
        assert _digests(r.out_dir, checkpoints=False) == _digests(out, checkpoints=False)
        assert _same(*(torch.load(d / "checkpoint.pt", weights_only=True)
                       for d in (r.out_dir, out)))


def test_shared_pass_refuses_other_batches(tmp_path):
    a, b = _cfg("jumprelu"), _cfg("topk")
    other = dataclasses.replace(b, train=dataclasses.replace(b.train, lr=1e-3))
    src = TensorBatchSource(synthetic_acts())
    with pytest.raises(TrainingError, match="train section"):
        train_sweeps([SweepRun(a, tmp_path / "a"), SweepRun(other, tmp_path / "b")], src)
    with pytest.raises(TrainingError, match="same folder"):
        train_sweeps([SweepRun(a, tmp_path / "a"), SweepRun(b, tmp_path / "a")], src)


def test_runs_differing_only_in_their_saes_are_grouped():
    """The matrix's runs share one pass per model; the default's replication (another
    model) shares none."""
    from sae_med.experiment import shared_pass_groups

    repo = Path(__file__).resolve().parents[2]
    groups = shared_pass_groups(load_config(repo / "configs" / "matrix.yaml", []))
    assert [[c.name for c in g] for g in groups] == [
        ["matrix_relu", "default", "matrix_topk", "matrix_batchtopk", "matrix_matryoshka"],
        ["matrix_relu_smollm2", "smollm2", "matrix_topk_smollm2",
         "matrix_batchtopk_smollm2", "matrix_matryoshka_smollm2"]]
    assert shared_pass_groups(load_config(repo / "configs" / "default.yaml", [])) == []
