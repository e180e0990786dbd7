"""Tests for sae_med.train.sweep: schedules, a tiny sweep, kernels, bad input, kill-and-resume."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_train import synthetic_acts, tiny_config

from sae_med.artifacts import derived_seed
from sae_med.cache.batches import TensorBatchSource
from sae_med.config import Config, TrainConfig
from sae_med.layout import CHECKPOINT_NAME, snapshot_dir
from sae_med.measure.metrics import fve
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.train.records import TrainingError, TrainMetrics
from sae_med.train.schedule import batch_seed, init_seed, lr_at, snapshot_steps, sparsity_coeff_at
from sae_med.train.step import SweepMember, clip_grad_norm_, train_step
from sae_med.train.sweep import InputNorm, estimate_input_norm, run_key, train_saes

REPO = Path(__file__).resolve().parents[2]


# seeding comes from conftest's autouse fixture
pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedules():
    tc = TrainConfig(lr=1.0, lr_warmup_steps=10, lr_decay_frac=0.2, sparsity_coeff=2.0,
                     sparsity_warmup_steps=4)
    n = 100
    assert lr_at(0, tc, n) == pytest.approx(0.1)
    assert lr_at(9, tc, n) == pytest.approx(1.0)
    assert lr_at(50, tc, n) == pytest.approx(1.0)
    assert lr_at(80, tc, n) == pytest.approx(1.0)
    assert lr_at(90, tc, n) == pytest.approx(0.5)
    assert lr_at(99, tc, n) == pytest.approx(0.05)
    assert [sparsity_coeff_at(s, tc) for s in (0, 1, 3, 10)] == pytest.approx([0.5, 1, 2, 2])


def test_batch_fve_known_cases():
    x = torch.randn(100, 8)
    assert fve(x, x) == pytest.approx(1.0)
    assert fve(x, x.mean(0, keepdim=True).expand_as(x)) == pytest.approx(0.0, abs=1e-6)


class CountingSource(TensorBatchSource):
    def __init__(self, acts: torch.Tensor):
        super().__init__(acts)
        self.pulled: dict[int, int] = {}

    def iter_batches(self, batch_size, seed, start_batch=0):
        for b in super().iter_batches(batch_size, seed, start_batch):
            self.pulled[seed] = self.pulled.get(seed, 0) + 1
            yield b


def test_tiny_sweep_outputs_and_one_pass(tmp_path):
    cfg = tiny_config()
    src = CountingSource(synthetic_acts())
    results = train_saes(cfg, src, tmp_path / "run", progress=False)
    assert [r.l0_target for r in results] == [4.0, 8.0]
    assert src.pulled[cfg.seed] == 40  # each training batch read once for both SAEs
    for r in results:
        assert {p.name for p in r.path.iterdir()} >= {"cfg.json", "sae.safetensors",
                                                      "metrics.jsonl", "config.json"}
        rows = [json.loads(ln) for ln in (r.path / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == list(range(5, 41, 5))
        assert set(rows[0]) >= {"step", "tokens", "lr", "loss", "mse", "sparsity_loss", "l0",
                                "fve", "dead_frac"}
        assert rows[-1]["loss"] < rows[0]["loss"]
        sae = JumpReLUSAE.load(r.path)
        assert float(sae.input_scale) == 1.0
        # folded SAE works on raw activations
        x = src.chunks[0][:256]
        assert fve(x, sae(x).x_hat.detach()) > 0.3
        assert r.input_scale == pytest.approx(1 / x.pow(2).sum(-1).mean().sqrt().item(),
                                              rel=0.2)


def test_result_metrics_are_the_last_logged_row(tmp_path):
    """``TrainResult.metrics`` is the last row of metrics.jsonl, as a run that resumes at
    its end (no step left) reads it back; ``final`` is the same row as a dict."""
    cfg = tiny_config(n_tokens=32 * 6, checkpoint_every=0)
    acts = synthetic_acts(n=256)
    first = train_saes(cfg, TensorBatchSource(acts), tmp_path / "r", progress=False)
    again = train_saes(cfg, TensorBatchSource(acts), tmp_path / "r", resume=True,
                       progress=False)
    for r, r2 in zip(first, again, strict=True):
        last = (r.path / "metrics.jsonl").read_text().splitlines()[-1]
        assert r.metrics == r2.metrics == TrainMetrics.from_json(last)
        assert r.metrics.to_json() == last
        assert r.metrics.step == 6 and r.metrics.tokens == 6 * 32
        assert r.final == json.loads(last)


def test_metrics_row_reader_tolerates_older_rows():
    row = TrainMetrics.from_json('{"step": 5, "tokens": 160, "l0": 3.5, "extra": 1}')
    assert (row.step, row.tokens, row.l0) == (5, 160, 3.5)
    assert math.isnan(row.fve) and math.isnan(row.dead_frac)


def test_train_step_returns_a_named_record():

    tc = TrainConfig(lr=1e-3)
    sae = JumpReLUSAE(16, 64, generator=torch.Generator().manual_seed(0))
    x = synthetic_acts(n=32)
    x = x / x.pow(2).sum(-1).mean().sqrt()
    r = train_step(SweepMember(sae, 4.0, tc, Path("unused")), x, 1e-3, 1.0, tc, fast=False)
    assert float(r.loss) == pytest.approx(float(r.mse + r.sparsity_loss))
    assert r.x_hat.shape == x.shape and r.fired.shape == (64,) and r.fired.dtype == torch.bool
    assert float(r.sparsity_loss) == pytest.approx((float(r.l0) / 4.0 - 1) ** 2, rel=1e-5)


def test_checkpoint_of_another_run_is_refused_or_retrained(tmp_path):
    """resume=True refuses a checkpoint of another config; with retrain_other_run the
    sweep starts over (every step logged again) instead."""
    acts = synthetic_acts(n=256)
    cfg = tiny_config(n_tokens=32 * 6, checkpoint_every=0)
    train_saes(cfg, TensorBatchSource(acts), tmp_path / "r", progress=False)
    other = tiny_config(n_tokens=32 * 6, checkpoint_every=0, lr=1e-3)
    with pytest.raises(TrainingError, match="belongs to a different run"):
        train_saes(other, TensorBatchSource(acts), tmp_path / "r", resume=True,
                   progress=False)
    [r, _] = train_saes(other, TensorBatchSource(acts), tmp_path / "r", resume=True,
                        progress=False, retrain_other_run=True)
    rows = [json.loads(ln) for ln in (r.path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [5, 6]
    assert rows[0]["lr"] == pytest.approx(1e-3)
    state = torch.load(tmp_path / "r" / CHECKPOINT_NAME, weights_only=True)
    assert state["run_key"] == json.loads((r.path / "cfg.json").read_text())["metadata"][
        "run_key"]


def test_checkpoint_of_another_format_is_refused(tmp_path, monkeypatch):
    acts = synthetic_acts(n=256)
    cfg = tiny_config(n_tokens=32 * 6, checkpoint_every=0)
    train_saes(cfg, TensorBatchSource(acts), tmp_path / "r", progress=False)
    for saved in (tmp_path / "r").glob("l0_*/cfg.json"):  # unfinished: resume reads it
        saved.unlink()
    monkeypatch.setattr("sae_med.train.checkpoint.CHECKPOINT_FORMAT", 99)
    with pytest.raises(TrainingError, match="has format 3, this version reads 99; delete"):
        train_saes(cfg, TensorBatchSource(acts), tmp_path / "r", resume=True,
                   progress=False)


def _same_grads(a: JumpReLUSAE, b: JumpReLUSAE, gen: torch.Generator, scale: float) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        g = scale * torch.randn(p.shape, generator=gen)
        p.grad, q.grad = g.clone(), g.clone()


def test_adam_through_the_w_enc_alias_is_plain_fused_adam():
    """SweepMember's Adam updates W_enc through a contiguous alias of its transposed
    storage: the same parameters, to the bit, as fused Adam on the SAE's own."""
    tc = TrainConfig(batch_size=32, lr=1e-2, threshold_lr_mult=1.0)
    a = JumpReLUSAE(16, 64, generator=torch.Generator().manual_seed(0))
    b = JumpReLUSAE(16, 64, generator=torch.Generator().manual_seed(0))
    member = SweepMember(a, 4.0, tc, Path("unused"))
    assert member.enc_alias is not a.W_enc  # the alias is in use
    ref = torch.optim.Adam(b.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                           fused=True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        _same_grads(a, b, gen, 1.0)
        member.step()
        ref.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(a.W_enc, JumpReLUSAE(16, 64, generator=torch.Generator()
                                                .manual_seed(0)).W_enc)


@pytest.mark.parametrize("scale", [1e-3, 10.0])
def test_clip_grad_norm_is_torchs_below_and_above_the_bar(scale):
    a = JumpReLUSAE(16, 64, generator=torch.Generator().manual_seed(0))
    b = JumpReLUSAE(16, 64, generator=torch.Generator().manual_seed(0))
    _same_grads(a, b, torch.Generator().manual_seed(2), scale)
    clip_grad_norm_(a, 1.0)
    norm = torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    assert (float(norm) > 1.0) == (scale > 1)  # both branches are exercised
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_init_seeds_differ_by_corpus_target_and_replicate(tmp_path):
    """No two SAEs of the design share an initial decoder; a replicate reads its own batch
    order; the metadata names corpus, target and replicate."""
    seeds = {init_seed(3, c, t, r) for c in ("medical", "broad") for t in (4.0, 8.0)
             for r in range(3)}
    assert len(seeds) == 12
    assert batch_seed(3, 0) == 3 and batch_seed(3, 1) != batch_seed(3, 2)
    cfg = tiny_config(n_tokens=32 * 2, lr=1e-12)  # two near-no-op steps: weights ~ init
    acts = synthetic_acts(n=256)
    decoders, pulled = {}, {}
    for corpus, rep in (("medical", 0), ("broad", 0), ("medical", 1)):
        src = CountingSource(acts)
        runs = train_saes(cfg, src, tmp_path / corpus / f"seed_{rep}", progress=False,
                          train_corpus=corpus, replicate=rep)
        pulled[(corpus, rep)] = set(src.pulled) - {derived_seed(cfg.seed, "norm")}
        for r in runs:
            assert (r.train_corpus, r.replicate) == (corpus, rep)
            md = json.loads((r.path / "cfg.json").read_text())["metadata"]
            assert (md["train_corpus"], md["l0_target"], md["replicate"]) == (corpus,
                                                                             r.l0_target, rep)
            assert md["init_seed"] == init_seed(cfg.seed, corpus, r.l0_target, rep)
            decoders[(corpus, rep, r.l0_target)] = JumpReLUSAE.load(r.path).W_dec
    keys = list(decoders)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            cos = torch.nn.functional.cosine_similarity(decoders[a], decoders[b], dim=1)
            assert cos.abs().mean() < 0.5, (a, b)  # independent random directions
    assert cfg.seed in pulled[("medical", 0)] and cfg.seed in pulled[("broad", 0)]
    assert batch_seed(cfg.seed, 1) in pulled[("medical", 1)]
    assert cfg.seed not in pulled[("medical", 1)]


def test_sparse_and_dense_kernels_train_the_same(tmp_path):
    acts = synthetic_acts(n=512)
    outs = {}
    for kernel in ("sparse", "dense"):
        cfg = tiny_config(kernel=kernel, n_tokens=32 * 8, checkpoint_every=0)
        [r, _] = train_saes(cfg, TensorBatchSource(acts), tmp_path / kernel, progress=False)
        outs[kernel] = JumpReLUSAE.load(r.path)
    for name, p in outs["sparse"].named_parameters():
        assert torch.allclose(p, dict(outs["dense"].named_parameters())[name], atol=1e-5), name


def test_bad_inputs(tmp_path):
    acts = synthetic_acts(n=512)
    cfg = tiny_config(n_tokens=32 * 12, checkpoint_every=5)
    with pytest.raises(TrainingError, match="d_model=16 but the d_model argument expects"):
        train_saes(cfg, TensorBatchSource(acts), tmp_path / "a", d_model=17, progress=False)
    with pytest.raises(TrainingError, match="init_saes\\[0\\] has width"):
        train_saes(cfg, TensorBatchSource(acts), tmp_path / "a", progress=False,
                   init_saes=[JumpReLUSAE(16, 32), JumpReLUSAE(16, 32)])

    class PoisonedSource(TensorBatchSource):
        def iter_batches(self, batch_size, seed, start_batch=0):
            for i, b in enumerate(super().iter_batches(batch_size, seed, start_batch),
                                  start_batch):
                if i == 7 and seed == cfg.seed:
                    b = b.clone()
                    b[3, 2] = float("nan")
                yield b

    run = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"step 7: NaN/inf.*epoch 0, from rows 0\+"):
        train_saes(cfg, PoisonedSource(acts), run, progress=False)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 5


def offset_acts(n: int = 2048) -> torch.Tensor:
    """synthetic_acts on top of a constant vector 5x their typical norm (a residual stream
    dominated by its mean, like Gemma's)."""
    x = synthetic_acts(n=n)
    direction = torch.ones(16) / 4.0
    return x + 5.0 * x.norm(dim=1).mean() * direction


def test_input_norm_is_exact_and_round_trips():
    x = offset_acts(n=256)
    for center in (False, True):
        norm = estimate_input_norm(TensorBatchSource(x), 64, 4, seed=1, center=center)
        want_mean = x.mean(0) if center else torch.zeros(16)
        assert torch.allclose(norm.mean, want_mean, rtol=1e-5, atol=1e-3)
        # E||(x - mean) s||^2 = 1 exactly over the batches read (all 256 rows here)
        assert norm.apply(x).pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-5)
    sae = JumpReLUSAE(16, 64, bandwidth=0.01, init_threshold=0.05,
                      generator=torch.Generator().manual_seed(0))
    sae.input_scale.fill_(norm.scale)
    raw = norm.to_raw(sae)  # takes raw x: (sae((x - mean) s) / s) + mean
    want = sae(norm.apply(x)).x_hat / norm.scale + norm.mean
    assert torch.allclose(raw(x).x_hat, want, rtol=1e-4, atol=1e-2)
    back = norm.from_raw(raw)
    assert torch.allclose(back(norm.apply(x)).x_hat, sae(norm.apply(x)).x_hat, atol=1e-4)
    assert InputNorm(torch.zeros(16), 1.0).apply(x).equal(x)


def test_centering_helps_when_the_mean_dominates(tmp_path):
    """Same budget, same seeds: training on x - E[x] fits a mean-dominated stream better
    (the FVE counts variance around the mean, which the plain recipe must first learn)."""
    acts = offset_acts()
    score = {}
    for center in (False, True):
        cfg = tiny_config(center_inputs=center, checkpoint_every=0)
        r = train_saes(cfg, TensorBatchSource(acts), tmp_path / str(center), progress=False)[1]
        sae = JumpReLUSAE.load(r.path)
        score[center] = fve(acts, sae(acts).x_hat.detach())
    assert score[True] > score[False] + 0.05, score


@pytest.mark.parametrize("center", [False, True])
def test_init_saes_start_from_given_weights(tmp_path, center):
    acts = offset_acts(n=512) if center else synthetic_acts(n=512)
    cfg = tiny_config(n_tokens=32, lr=1e-12, checkpoint_every=0, lr_warmup_steps=1,
                      center_inputs=center)
    inits = [JumpReLUSAE(16, 64, bandwidth=0.01, init_threshold=0.5) for _ in range(2)]
    results = train_saes(cfg, TensorBatchSource(acts), tmp_path / "r", progress=False,
                         init_saes=inits)
    loaded = JumpReLUSAE.load(results[0].path)
    x = acts[:64]
    assert torch.allclose(loaded(x).x_hat, inits[0](x).x_hat, rtol=1e-4,
                          atol=1e-5 * float(x.abs().max()))


SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from sae_med.cache.batches import TensorBatchSource
    from sae_med.config import config_from_dict
    from sae_med.train.sweep import train_saes
    torch.set_num_threads(1)
    acts_path, out, resume, cfg_json = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
    import json
    cfg = config_from_dict(json.loads(cfg_json))

    class Slow(TensorBatchSource):
        def iter_batches(self, batch_size, seed, start_batch=0):
            for b in super().iter_batches(batch_size, seed, start_batch):
                time.sleep(0.02)
                yield b

    train_saes(cfg, Slow(torch.load(acts_path)), out, resume=resume, progress=False)
""")


def _launch(script: Path, acts: Path, out: Path, resume: bool, cfg: Config
            ) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(acts), str(out),
                             "1" if resume else "0", cfg.to_json()], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    cfg = tiny_config(n_tokens=32 * 40, checkpoint_every=10, kernel="sparse")
    acts_path = tmp_path / "acts.pt"
    torch.save(synthetic_acts(n=1024), acts_path)
    script = tmp_path / "run_train.py"
    script.write_text(SCRIPT)

    killed = tmp_path / "killed"
    proc = _launch(script, acts_path, killed, False, cfg)
    deadline = time.time() + 60
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]
    assert 0 < step < 40, step
    assert not (killed / "l0_4" / "cfg.json").exists()

    procs = [_launch(script, acts_path, killed, True, cfg),
             _launch(script, acts_path, tmp_path / "clean", False, cfg)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()

    for target in ("l0_4", "l0_8"):
        a = JumpReLUSAE.load(killed / target)
        b = JumpReLUSAE.load(tmp_path / "clean" / target)
        for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
            assert torch.allclose(pa, pb, rtol=1e-6, atol=1e-6), (target, name)
        ma = (killed / target / "metrics.jsonl").read_text()
        mb = (tmp_path / "clean" / target / "metrics.jsonl").read_text()
        assert len(ma.splitlines()) == len(mb.splitlines()) == 8


def test_bf16_autocast_dense_path_and_threshold_lr_mult(tmp_path):
    cfg = tiny_config(n_tokens=32 * 6, autocast_bf16=True, threshold_lr_mult=7.0,
                      checkpoint_every=0)
    [r, _] = train_saes(cfg, TensorBatchSource(synthetic_acts(n=512)), tmp_path / "bf16",
                        progress=False)
    state = torch.load(tmp_path / "bf16" / "checkpoint.pt", weights_only=True)
    groups = state["members"][0]["opt"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 7.0]
    assert groups[1]["lr"] == pytest.approx(7.0 * groups[0]["lr"])
    sae = JumpReLUSAE.load(r.path)
    assert sae.log_threshold.dtype == torch.float32
    assert all(torch.isfinite(p).all() for p in sae.parameters())


def test_target_quantile_threshold_init_starts_at_the_target():
    from sae_med.train.sweep import init_threshold_at_target_

    x = synthetic_acts(n=4096, d=16)
    x = x / x.pow(2).sum(-1).mean().sqrt()
    sae = JumpReLUSAE(16, 64, generator=torch.Generator().manual_seed(0))
    assert float(sae(x).l0) > 20  # the paper's 0.001 start fires on about half the latents
    init_threshold_at_target_(sae, x, target=6.0, floor=0.001)
    assert float(sae(x).l0) == pytest.approx(6.0, rel=0.05)
    assert (sae.threshold >= 0.001 - 1e-9).all()


def _one_target(cfg: Config) -> Config:
    return dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, l0_targets=(6.0,)))


def test_compiled_step_matches_eager(tmp_path):
    """train.compile (inductor on this CPU) against the eager dense step, 12 steps."""
    from sae_med.train.step import compile_available

    if not compile_available():
        pytest.skip("torch.compile is unusable on this machine (the fallback is tested below)")
    acts = synthetic_acts(n=512)
    saes = {}
    for compiled in (False, True):
        cfg = _one_target(tiny_config(kernel="dense", compile=compiled, n_tokens=32 * 12,
                                      checkpoint_every=0))
        [r] = train_saes(cfg, TensorBatchSource(acts), tmp_path / str(compiled),
                         progress=False)
        saes[compiled] = JumpReLUSAE.load(r.path)
    for (name, a), b in zip(saes[False].named_parameters(), saes[True].parameters(),
                            strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (name, (a - b).abs().max())


def test_compile_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch, caplog):
    import sae_med.train.step as step_mod

    def broken(*_a, **_k):
        raise RuntimeError("no C++ compiler (simulated)")

    monkeypatch.setattr(step_mod, "_COMPILE_OK", None)
    monkeypatch.setattr(torch, "compile", broken)
    acts = synthetic_acts(n=512)
    cfg = _one_target(tiny_config(compile=True, n_tokens=32 * 4, checkpoint_every=0))
    with caplog.at_level("WARNING", logger="sae_med.train.step"):
        [r] = train_saes(cfg, TensorBatchSource(acts), tmp_path / "fallback", progress=False)
    assert "torch.compile is unusable here" in caplog.text and "simulated" in caplog.text
    eager_cfg = _one_target(tiny_config(kernel="dense", n_tokens=32 * 4, checkpoint_every=0))
    [e] = train_saes(eager_cfg, TensorBatchSource(acts), tmp_path / "eager", progress=False)
    for (name, a), b in zip(JumpReLUSAE.load(r.path).named_parameters(),
                            JumpReLUSAE.load(e.path).parameters(), strict=True):
        assert torch.equal(a, b), name


def test_compile_config_rejects_the_sparse_kernel():
    from sae_med.config import ConfigError

    with pytest.raises(ConfigError, match="train.compile"):
        TrainConfig(compile=True, kernel="sparse")


def test_prefetch_yields_the_same_stream_and_reraises():
    from sae_med.cache.batches import prefetch

    src = TensorBatchSource(synthetic_acts(n=512), chunk_rows=100)
    ref = src.iter_batches(64, seed=1)
    fetched = prefetch(src.iter_batches(64, seed=1), depth=3)
    for _ in range(20):  # more than one epoch
        assert torch.equal(next(fetched), next(ref))
    fetched.close()

    def failing():
        yield torch.zeros(2)
        raise ValueError("bad shard")

    it = prefetch(failing())
    assert torch.equal(next(it), torch.zeros(2))
    with pytest.raises(ValueError, match="bad shard"):
        next(it)


def test_snapshot_is_the_shorter_run(tmp_path):
    """Without an lr decay a run's snapshot at a budget is, weight for weight, the run
    trained to that budget; its metadata names the budget and the steps it took."""
    acts = synthetic_acts(n=1024)
    long = tiny_config(n_tokens=32 * 20, lr_decay_frac=0.0, snapshot_tokens=(32 * 7 + 5,))
    short = tiny_config(n_tokens=32 * 8, lr_decay_frac=0.0)
    assert snapshot_steps(long.train) == {8: [32 * 7 + 5]}
    [r_long, _] = train_saes(long, TensorBatchSource(acts), tmp_path / "long", progress=False)
    [r_short, _] = train_saes(short, TensorBatchSource(acts), tmp_path / "short",
                              progress=False)
    snap_dir = snapshot_dir(r_long.path, 32 * 7 + 5)
    snap, ref = JumpReLUSAE.load(snap_dir), JumpReLUSAE.load(r_short.path)
    for name, p in snap.named_parameters():
        torch.testing.assert_close(p, dict(ref.named_parameters())[name])
    meta = json.loads((snap_dir / "cfg.json").read_text())["metadata"]
    assert (meta["snapshot_tokens"], meta["steps"], meta["tokens"]) == (32 * 7 + 5, 8, 256)
    final = JumpReLUSAE.load(r_long.path)
    assert not torch.equal(final.W_enc, snap.W_enc)  # the run went on past its snapshot
    assert "snapshot_tokens" not in json.loads((r_long.path / "cfg.json").read_text())[
        "metadata"]


def test_budgets_within_one_batch_each_get_their_snapshot(tmp_path):
    cfg = tiny_config(n_tokens=32 * 6, checkpoint_every=0, snapshot_tokens=(33, 40, 96))
    assert snapshot_steps(cfg.train) == {2: [33, 40], 3: [96]}
    [r, _] = train_saes(cfg, TensorBatchSource(synthetic_acts(n=256)), tmp_path,
                        progress=False)
    a, b = (JumpReLUSAE.load(snapshot_dir(r.path, n)) for n in (33, 40))
    assert torch.equal(a.W_enc, b.W_enc)  # the same step, saved under each budget
    assert snapshot_dir(r.path, 96).is_dir()


def test_snapshots_are_part_of_the_run_key():
    """A finished run without the snapshots a config now asks for is retrained, not reused
    without them; a config without snapshots keeps the key it had before they existed."""
    src = TensorBatchSource(synthetic_acts(n=256))
    keys = {run_key(tiny_config(snapshot_tokens=s), src) for s in ((), (64,), (64, 128))}
    assert len(keys) == 3
    assert "snapshot_tokens" not in tiny_config().to_dict()["train"]


def files_in(root: Path) -> dict[Path, tuple[bytes, int]]:
    """Every file under ``root`` with its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def refuse_checkpoint_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def opened(*_args, **_kwargs):
        raise AssertionError("reusing a finished run opened a checkpoint")

    monkeypatch.setattr(torch, "load", opened)


def test_reusing_a_finished_run_opens_no_checkpoint_and_writes_nothing(tmp_path, monkeypatch):
    cfg = tiny_config(n_tokens=32 * 8, checkpoint_every=4)
    acts = synthetic_acts(n=512)
    first = train_saes(cfg, TensorBatchSource(acts), tmp_path, progress=False)
    before = files_in(tmp_path)
    assert tmp_path / CHECKPOINT_NAME in before and len(before) > 8
    with monkeypatch.context() as m:
        refuse_checkpoint_loads(m)
        again = train_saes(cfg, TensorBatchSource(acts), tmp_path, resume=True,
                           progress=False)
    assert again == first
    assert files_in(tmp_path) == before
    # an SAE lost after the final checkpoint is written again from it
    saved = JumpReLUSAE.load(first[0].path).W_enc
    (first[0].path / "cfg.json").unlink()
    train_saes(cfg, TensorBatchSource(acts), tmp_path, resume=True, progress=False)
    assert torch.equal(JumpReLUSAE.load(first[0].path).W_enc, saved)


def test_pre_act_term_known_answer():
    """relu(theta - z) summed over the dead latents only, averaged over rows."""
    from sae_med.train.step import pre_act_term

    sae = JumpReLUSAE(2, 3, init_threshold=1.0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -0.5, 0.0]))
    x = torch.tensor([[0.25, 0.0], [2.0, 1.0]])  # z = [[.25, -.5, .5], [2, .5, 4]]
    dead = torch.tensor([True, True, False])
    # row 0: (1 - .25) + (1 + .5); row 1: 0 + (1 - .5)
    assert float(pre_act_term(sae, x, dead)) == pytest.approx((2.25 + 0.5) / 2)
    assert float(pre_act_term(sae, x, torch.zeros(3, dtype=torch.bool))) == 0.0
    loss = pre_act_term(sae, x, dead)
    loss.backward()
    assert float(sae.b_enc.grad[2]) == 0.0 and float(sae.b_enc.grad[0]) < 0


def _half_dead_inits(acts: torch.Tensor, live_l0: tuple[float | None, ...] = (None, None)
                     ) -> list[JumpReLUSAE]:
    """One raw-space SAE (16 -> 64) per ``live_l0`` whose latents 32.. have thresholds above
    every pre-activation of ``acts``: dead from the first step unless something revives
    them. The live latents' thresholds are 0.05, or with an L0 the quantile that gives it."""
    scale = float(acts.pow(2).sum(-1).mean().sqrt())
    inits = []
    for l0 in live_l0:
        sae = JumpReLUSAE(16, 64, bandwidth=0.01, init_threshold=0.05,
                          generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            sae.W_enc.copy_(sae.W_dec.T)
            if l0 is not None:
                z = acts @ sae.W_enc[:, :32] + sae.b_enc[:32]
                sae.log_threshold[:32] = torch.quantile(z, 1 - l0 / 32, dim=0).clamp_min(
                    0.05).log()
            sae.log_threshold[32:] = math.log(1.5 * scale)  # raw units
        inits.append(sae)
    return inits


def test_pre_act_loss_revives_dead_latents(tmp_path):
    """Half the latents start with thresholds above every pre-activation: the plain recipe
    leaves them dead, the pre-activation loss brings them back on the same budget."""
    acts = synthetic_acts(n=1024)
    live = {}
    for coeff in (0.0, 1.0):
        inits = _half_dead_inits(acts)
        cfg = tiny_config(n_tokens=32 * 80, checkpoint_every=0, pre_act_loss=coeff,
                          dead_window_tokens=32 * 5, threshold_lr_mult=20.0)
        results = train_saes(cfg, TensorBatchSource(acts), tmp_path / str(coeff),
                             progress=False, init_saes=inits)
        with torch.no_grad():
            live[coeff] = [float((JumpReLUSAE.load(r.path).encode(acts) > 0).any(0)
                                 .float().mean()) for r in results]
    assert all(v <= 0.5 for v in live[0.0]) and all(v >= 0.9 for v in live[1.0]), live
    # configs without the remedy keep their old run keys; with it, the key changes
    assert "pre_act_loss" not in Config().to_dict()["train"]
    source = TensorBatchSource(acts)
    assert run_key(tiny_config(pre_act_loss=1.0), source) != run_key(tiny_config(), source)


class _KilledAt(TensorBatchSource):
    """``acts``, failing when training batch ``at`` (of order ``seed``) is asked for: a run
    killed mid-way (the input-norm batches come in another order)."""

    def __init__(self, acts: torch.Tensor, at: int, seed: int):
        super().__init__(acts)
        self.at, self.seed = at, seed

    def iter_batches(self, batch_size, seed, start_batch=0):
        for i, b in enumerate(super().iter_batches(batch_size, seed, start_batch),
                              start=start_batch):
            if i == self.at and seed == self.seed:
                raise KeyboardInterrupt("killed")
            yield b


@pytest.mark.parametrize("kernel", ["auto", "sparse"])
def test_killed_twice_with_the_pre_act_loss_resumes_to_the_same_weights(kernel, tmp_path):
    """The remedy's run, killed before the pre-activation loss switches on (resumed from
    step 10, on at 12) and again with dead latents past the window (resumed from 30,
    latents 32.. dead since step 0 and last-fired clocks mid-window): the same SAEs,
    checkpoint state and metrics to the bit as an unbroken run. ``auto`` picks each
    step's kernel by the previous step's L0: target 3 is near the bar (5% of the width),
    so its steps switch kernels."""
    acts = synthetic_acts(n=1024)
    cfg = tiny_config(n_tokens=32 * 50, checkpoint_every=10, pre_act_loss=0.1,
                      dead_window_tokens=32 * 12, threshold_lr_mult=5.0, kernel=kernel)
    cfg = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, l0_targets=(3.0, 8.0)))
    inits = functools.partial(_half_dead_inits, acts, live_l0=cfg.sae.l0_targets)
    whole = train_saes(cfg, TensorBatchSource(acts), tmp_path / "whole", progress=False,
                       init_saes=inits())
    cut = tmp_path / "cut"
    for at, saved in ((15, 10), (35, 30)):
        with pytest.raises(KeyboardInterrupt):
            train_saes(cfg, _KilledAt(acts, at, batch_seed(cfg.seed, 0)), cut, resume=True,
                       progress=False, init_saes=inits())
        state = torch.load(cut / CHECKPOINT_NAME, weights_only=True)
        assert state["step"] == saved
    tokens = 30 * cfg.train.batch_size  # the second resume's first step has dead latents
    for st in state["members"]:
        since = tokens - st["last_fired"]
        assert (since >= cfg.train.dead_window_tokens).sum() > 0
        assert ((since > 0) & (since < cfg.train.dead_window_tokens)).sum() > 0
    resumed = train_saes(cfg, TensorBatchSource(acts), cut, resume=True, progress=False,
                         init_saes=inits())
    for a, b in zip(whole, resumed, strict=True):
        wa, wb = load_file(a.path / "sae.safetensors"), load_file(b.path / "sae.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), a.path
        assert (a.path / "metrics.jsonl").read_text() == (b.path / "metrics.jsonl").read_text()
    ends = [torch.load(d / CHECKPOINT_NAME, weights_only=True) for d in (tmp_path / "whole", cut)]
    for ma, mb in zip(ends[0]["members"], ends[1]["members"], strict=True):
        assert torch.equal(ma["last_fired"], mb["last_fired"])
        assert ma["prev_l0"] == mb["prev_l0"]
        for sa, sb in zip(ma["opt"]["state"].values(), mb["opt"]["state"].values(),
                          strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _parallel_cfg(cache_root: Path, out: Path, workers: int) -> Config:
    """Two corpora x two seeds of tiny SAEs on test_activations' 600-token caches."""
    from sae_med.config import load_config

    return load_config(None, [
        f"cache_dir={cache_root}", f"output_dir={out}", "cache.n_tokens=600",
        "cache.shard_tokens=200", "cache.batch_size=4", "cache.ctx_len=48",
        "train_corpora=[medical, broad]", "sae.width=64", "sae.l0_targets=[4, 8]",
        "sae.seeds=2", "train.n_tokens=2048", "train.batch_size=128", "train.norm_batches=2",
        f"train.workers={workers}"])


@pytest.fixture
def real_model_for_stages(model, monkeypatch):
    """The session's Gemma behind experiment.load_model_for (not a second copy)."""
    from sae_med import experiment

    monkeypatch.setattr(experiment, "load_model_for", lambda cfg: model)


def test_parallel_sweeps_match_one_process(cache_root, tmp_path, real_model_for_stages,
                                           monkeypatch):
    """train.workers=2 trains the four sweeps (2 corpora x 2 seeds) in two processes: the
    same SAEs to the bit at this size, the same results in the same order; finished
    sweeps are then reused in this process (no workers started)."""
    from safetensors.torch import load_file

    from sae_med import experiment

    cfgs = {w: _parallel_cfg(cache_root, tmp_path / f"w{w}", w) for w in (1, 2)}
    out = {w: experiment.stage_train(cfg, progress=False) for w, cfg in cfgs.items()}

    def no_workers(*_args):
        raise AssertionError("finished sweeps started workers")

    monkeypatch.setattr(experiment, "_train_parallel", no_workers)
    assert experiment.stage_train(cfgs[2], progress=False) == out[2]
    assert list(out[1]) == list(out[2]) == ["medical", "broad"]
    for corpus in out[1]:
        one, two = out[1][corpus], out[2][corpus]
        assert [(r.replicate, r.l0_target) for r in one] == \
            [(r.replicate, r.l0_target) for r in two] == [(0, 4), (0, 8), (1, 4), (1, 8)]
        for a, b in zip(one, two, strict=True):
            assert a.path != b.path and a.metrics == b.metrics
            wa, wb = load_file(a.path / "sae.safetensors"), load_file(b.path / "sae.safetensors")
            assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stage_train_reuses_a_finished_run_from_its_metadata(cache_root, tmp_path,
                                                            real_model_for_stages,
                                                            monkeypatch):
    """The stage a notebook calls for a finished run reads saved metadata only: no
    checkpoint is opened, every file of the run keeps its bytes and modification time."""
    from sae_med import experiment

    cfg = _parallel_cfg(cache_root, tmp_path, 1)
    first = experiment.stage_train(cfg, progress=False)
    before = files_in(tmp_path)
    with monkeypatch.context() as m:
        refuse_checkpoint_loads(m)
        assert experiment.stage_train(cfg, progress=False) == first
    assert files_in(tmp_path) == before


def test_a_failing_parallel_sweep_raises_its_own_error(cache_root, tmp_path,
                                                       real_model_for_stages):
    """A sweep that cannot start in its worker (its folder locked by another writer)
    surfaces in the caller as that error, with its message."""
    from sae_med.artifacts import ArtifactLockedError, artifact_lock
    from sae_med.experiment import stage_train
    from sae_med.layout import RUN_LOCK_NAME

    cfg = _parallel_cfg(cache_root, tmp_path, 2)
    locked = cfg.run_path / "saes" / "broad" / "seed_1"
    with artifact_lock(locked / RUN_LOCK_NAME, "a test"), \
            pytest.raises(ArtifactLockedError, match="seed_1"):
        stage_train(cfg, progress=False)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="train.workers"):
        TrainConfig(workers=0)


def test_a_killed_worker_is_one_clear_error_and_the_rerun_resumes(cache_root, tmp_path,
                                                                  real_model_for_stages):
    """kill -9 of a training worker mid-sweep: the caller gets a TrainingError saying what
    happened and what to do (not BrokenProcessPool); the rerun finishes every sweep."""
    import multiprocessing
    import threading

    from sae_med.experiment import stage_train

    small = _parallel_cfg(cache_root, tmp_path, 2)
    cfg = dataclasses.replace(small, train=dataclasses.replace(
        small.train, n_tokens=64_000, checkpoint_every=20))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            stage_train(cfg, progress=False)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    ckpt = cfg.run_path / "saes" / "medical" / "seed_0" / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = multiprocessing.active_children()
    assert ckpt.exists() and workers, "no worker reached its first checkpoint"
    os.kill(workers[0].pid, signal.SIGKILL)
    t.join(timeout=120)
    assert not t.is_alive() and len(errors) == 1
    assert isinstance(errors[0], TrainingError), repr(errors[0])
    assert "worker process died" in str(errors[0]) and "rerun" in str(errors[0])
    out = stage_train(cfg, progress=False)
    assert all(r.steps == 500 for runs in out.values() for r in runs)


def test_runs_differing_in_their_saes_train_from_one_pass(cache_root, tmp_path,
                                                          real_model_for_stages, monkeypatch):
    """A JumpReLU and a TopK run of the same caches (experiment.train_runs, two workers):
    every SAE and metrics file is the one each run's own stage_train writes, and each run's
    stage_train then reuses them."""
    from sae_med import experiment

    def run(out: Path, arch: str) -> Config:
        cfg = _parallel_cfg(cache_root, out, 2)
        return dataclasses.replace(cfg, name=arch,
                                   sae=dataclasses.replace(cfg.sae, architecture=arch))

    archs = ("jumprelu", "topk")
    alone = [experiment.stage_train(run(tmp_path / "alone", a), progress=False)
             for a in archs]
    together = [run(tmp_path / "together", a) for a in archs]
    shared = experiment.train_runs(together, progress=False)
    for one, both in zip(alone, shared, strict=True):
        pairs = [(a, b) for corpus in one for a, b in zip(one[corpus], both[corpus],
                                                          strict=True)]
        assert len(pairs) == 8 and all(a.metrics == b.metrics for a, b in pairs)
        for a, b in pairs:
            for name in ("sae.safetensors", "cfg.json", "metrics.jsonl"):
                assert (a.path / name).read_bytes() == (b.path / name).read_bytes()
    monkeypatch.setattr(experiment, "_train_sweep", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(experiment, "_train_parallel", lambda *a: pytest.fail("trained"))
    assert [experiment.stage_train(c, progress=False) for c in together] == shared
