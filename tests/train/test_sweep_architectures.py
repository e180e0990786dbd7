"""The sweep trains every ``sae.architecture`` on a real (tiny) activation cache: the SAEs
save and reload, their L0 moves toward its target, a killed run resumes to the same
weights, and each exports to sae-lens and reloads there with the same encodings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file

from sae_med.cache.batches import BatchSource, TensorBatchSource
from sae_med.config import Config, load_config
from sae_med.layout import CHECKPOINT_NAME
from sae_med.sae.factory import CLASSES, build_sae, load_sae, to_sae_lens
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.sae.relu import ReLUSAE
from sae_med.train.checkpoint import read_checkpoint
from sae_med.train.records import TrainingError
from sae_med.train.schedule import batch_seed, init_seed
from sae_med.train.step import L1_COEFF_START, L1_CONTROLLER_GAIN, SweepMember
from sae_med.train.sweep import train_saes

# seeding comes from conftest's autouse fixture
pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ("relu", "topk", "batchtopk", "matryoshka_batchtopk")
TARGETS = (4.0, 8.0)


def _cfg(cache_root, arch: str, *extra: str) -> Config:
    """64-latent SAEs, 60 steps of 64 rows; AuxK's dead window passes after 10 steps."""
    return load_config(None, [
        f"cache_dir={cache_root}", f"sae.architecture={arch}", "sae.width=64",
        "sae.l0_targets=[4, 8]", "train.n_tokens=3840", "train.batch_size=64",
        "train.lr=3e-3", "train.lr_warmup_steps=5", "train.sparsity_warmup_steps=10",
        "train.norm_batches=2", "train.log_every=5", "train.checkpoint_every=10",
        "train.dead_window_tokens=640", "train.device=cpu", *extra])


def _inference_l0(sae, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((sae.encode(x) != 0).sum(-1).float().mean())


class _Killed(BatchSource):
    """``source``, failing when batch ``at`` of the order ``seed`` is asked for (a run
    killed mid-way; the input-norm batches come in another order)."""

    def __init__(self, source: BatchSource, at: int, seed: int):
        self.source, self.at, self.seed = source, at, seed
        self.d_model, self.key = source.d_model, source.key

    def iter_batches(self, batch_size, seed, start_batch=0):
        for i, b in enumerate(self.source.iter_batches(batch_size, seed, start_batch),
                              start=start_batch):
            if i == self.at and seed == self.seed:
                raise KeyboardInterrupt("killed")
            yield b

    def describe_batch(self, batch_index, batch_size, seed):
        return self.source.describe_batch(batch_index, batch_size, seed)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_trains_saves_and_exports(arch, small_medical_cache, cache_root,
                                                    tmp_path):
    cfg = _cfg(cache_root, arch)
    results = train_saes(cfg, small_medical_cache, tmp_path / "run", progress=False,
                         train_corpus="medical")
    x = next(small_medical_cache.iter_batches(256, 0))
    for r in results:
        sae = load_sae(r.path)
        assert type(sae) is CLASSES[arch] and float(sae.input_scale) == 1.0
        meta = json.loads((r.path / "cfg.json").read_text())["metadata"]
        assert meta["l0_target"] == r.l0_target and meta["steps"] == 60
        assert ("l1_coeff" in meta) == (arch == "relu")
        # the same SAE at its initialisation (same seed and input scale)
        start = build_sae(cfg.sae, x.shape[1], r.l0_target, input_scale=r.input_scale,
                          generator=torch.Generator().manual_seed(
                              init_seed(cfg.seed, "medical", r.l0_target, 0)))
        l0_start = _inference_l0(start.folded(), x)
        l0_end = _inference_l0(sae, x)
        if arch == "topk":  # k per row from the start
            assert l0_start == l0_end == r.l0_target
        else:
            assert abs(l0_end - r.l0_target) < 0.5 * abs(l0_start - r.l0_target), (
                l0_start, l0_end)
        rows = [json.loads(ln) for ln in (r.path / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["mse"] < rows[0]["mse"] and math.isfinite(rows[-1]["loss"])
        assert r.metrics.fve > 0
        _check_export(sae, x, tmp_path / f"lens_{r.l0_target:g}")


def _check_export(sae, x: torch.Tensor, folder) -> None:
    """The export reloads in sae-lens from disk and encodes ``x`` (raw) as ours does."""
    to_sae_lens(sae).save_model(folder)
    lens = SAE.load_from_disk(str(folder))
    with torch.no_grad():
        ours, theirs = sae.encode(x), lens.encode(x)
    scale = float(ours.abs().max())
    torch.testing.assert_close(theirs, ours, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("arch", ["relu", "batchtopk"])
def test_a_killed_run_resumes_to_the_same_weights(arch, small_medical_cache, cache_root,
                                                  tmp_path):
    """Killed at step 25 (checkpoint at 20) and resumed: the same SAEs to the bit as an
    unbroken run, so the checkpoint carries the L1 controller and BatchTopK's threshold."""
    cfg = _cfg(cache_root, arch)
    whole = train_saes(cfg, small_medical_cache, tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_saes(cfg, _Killed(small_medical_cache, 25, batch_seed(cfg.seed, 0)),
                   tmp_path / "cut", progress=False)
    state = read_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME)
    assert state["step"] == 20
    member = SweepMember(build_sae(cfg.sae, small_medical_cache.d_model, 4.0), 4.0,
                         cfg.train, tmp_path / "unused")
    member.load_state(state["members"][0])  # the checkpoint loads into a fresh member
    if arch == "relu":
        assert member.l1_coeff != L1_COEFF_START
    else:
        assert float(member.sae.threshold) > 0
    resumed = train_saes(cfg, small_medical_cache, tmp_path / "cut", resume=True,
                         progress=False)
    for a, b in zip(whole, resumed, strict=True):
        wa, wb = load_file(a.path / "sae.safetensors"), load_file(b.path / "sae.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_l1_controller_moves_lambda_toward_the_target(tmp_path):
    """Above the target the coefficient grows, below it (or at L0 0) it shrinks, by at
    most e^gain a step; other architectures keep the scheduled coefficient."""
    tc = _cfg(tmp_path, "relu").train
    m = SweepMember(ReLUSAE(8, 16), 4.0, tc, tmp_path / "m")
    assert m.sparsity_coeff(2.0) == L1_COEFF_START
    m.follow_target_(40.0)
    assert m.l1_coeff == pytest.approx(L1_COEFF_START * math.exp(L1_CONTROLLER_GAIN))
    m.follow_target_(0.0)
    m.follow_target_(2.0)
    assert m.sparsity_coeff(2.0) == pytest.approx(
        L1_COEFF_START * math.exp(-L1_CONTROLLER_GAIN * math.log(2)))
    jr = SweepMember(JumpReLUSAE(8, 16), 4.0, tc, tmp_path / "j")
    jr.follow_target_(40.0)
    assert jr.sparsity_coeff(2.0) == 2.0


def test_what_only_jumprelu_trains_is_refused(tmp_path):
    acts = torch.randn(256, 16)
    cfg = load_config(None, ["sae.architecture=topk", "sae.width=64", "sae.l0_targets=[4]",
                             "train.kernel=sparse", "train.device=cpu"])
    with pytest.raises(TrainingError, match="train.kernel=sparse"):
        train_saes(cfg, TensorBatchSource(acts), tmp_path / "run", progress=False)
    cfg = load_config(None, ["sae.architecture=topk", "sae.width=64", "sae.l0_targets=[4]"])
    with pytest.raises(TrainingError, match="init_saes\\[0\\] is a 'jumprelu' SAE"):
        train_saes(cfg, TensorBatchSource(acts), tmp_path / "run", progress=False,
                   init_saes=[JumpReLUSAE(16, 64)])
    assert not list((tmp_path / "run").glob("l0_*"))  # no SAE folder was started
