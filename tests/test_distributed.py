"""Data-parallel training and caching under torchrun (2 CPU processes, gloo) against one
process, plus the single-process behaviour of the helpers in sae_med.runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny_train import synthetic_acts
from tiny_train import tiny_config as train_tiny_config

from sae_med import runtime
from sae_med.config import Config
from sae_med.measure.metrics import fve
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.train.step import global_fve

REPO = Path(__file__).resolve().parents[1]

TRAIN_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from sae_med import runtime
    from sae_med.cache.batches import TensorBatchSource
    from sae_med.config import config_from_dict
    from sae_med.train.sweep import train_saes
    torch.set_num_threads(1)
    runtime.init_from_env()
    acts_path, out, cfg_json, fail_at, resume = sys.argv[1:6]
    cfg = config_from_dict(json.loads(cfg_json))

    class Source(TensorBatchSource):
        def iter_batches(self, batch_size, seed, start_batch=0):
            for i, b in enumerate(super().iter_batches(batch_size, seed, start_batch),
                                  start_batch):
                if seed == cfg.seed and i == int(fail_at):
                    raise RuntimeError("simulated crash")
                yield b

    train_saes(cfg, Source(torch.load(acts_path)), out, resume=resume == "1", progress=False)
    sys.stdout.write(f"world {runtime.world_size()} rank {runtime.rank()}\\n")
""")


def tiny_config(**train: object) -> Config:
    """test_train's tiny sweep, 24 steps, checkpoints every 8."""
    return train_tiny_config(**{"n_tokens": 32 * 24, "checkpoint_every": 8, "log_every": 4,
                                **train})


def run_train(tmp: Path, out: Path, cfg: Config, nproc: int, fail_at: int = -1,
              resume: bool = False) -> subprocess.CompletedProcess:
    script, acts = tmp / "train_script.py", tmp / "acts.pt"
    if not script.exists():
        script.write_text(TRAIN_SCRIPT)
        torch.save(synthetic_acts(n=1024), acts)
    args = [str(script), str(acts), str(out), cfg.to_json(), str(fail_at),
            "1" if resume else "0"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    return subprocess.run(launcher + args, env=env, capture_output=True, text=True,
                          timeout=300)


def assert_same_saes(a: Path, b: Path, atol: float) -> None:
    for target in ("l0_4", "l0_8"):
        sa, sb = JumpReLUSAE.load(a / target), JumpReLUSAE.load(b / target)
        for (name, pa), pb in zip(sa.named_parameters(), sb.parameters(), strict=True):
            assert torch.allclose(pa, pb, rtol=1e-4, atol=atol), (target, name,
                                                                  (pa - pb).abs().max())
        ra = [json.loads(x) for x in (a / target / "metrics.jsonl").read_text().splitlines()]
        rb = [json.loads(x) for x in (b / target / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in ra] == [r["step"] for r in rb]
        for x, y in zip(ra, rb, strict=True):
            for k in ("loss", "mse", "l0", "fve", "dead_frac"):
                assert x[k] == pytest.approx(y[k], rel=1e-3, abs=1e-4), (target, x["step"], k)


@pytest.mark.parametrize("kernel", ["auto", "dense"])
def test_two_ranks_train_the_same_saes_as_one_process(tmp_path, kernel):
    """Global batch 32 = 2 ranks x 16 rows; kernel auto switches to the CSR path mid-run."""
    cfg = tiny_config(kernel=kernel)
    one = run_train(tmp_path, tmp_path / "one", cfg, 1)
    assert one.returncode == 0, one.stderr
    two = run_train(tmp_path, tmp_path / "two", cfg, 2)
    assert two.returncode == 0, two.stderr
    assert "world 2 rank 0" in two.stdout and "world 2 rank 1" in two.stdout
    assert_same_saes(tmp_path / "one", tmp_path / "two", atol=1e-5)


def test_resume_under_torchrun(tmp_path):
    """A 2-rank run that dies at step 13 resumes (2 ranks) from its step-8 checkpoint and
    ends where an uninterrupted single-process run ends."""
    cfg = tiny_config(kernel="dense")
    crashed = run_train(tmp_path, tmp_path / "two", cfg, 2, fail_at=13)
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr
    assert torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["step"] == 8
    assert not (tmp_path / "two" / "l0_4" / "cfg.json").exists()
    resumed = run_train(tmp_path, tmp_path / "two", cfg, 2, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    one = run_train(tmp_path, tmp_path / "one", cfg, 1)
    assert one.returncode == 0, one.stderr
    assert_same_saes(tmp_path / "one", tmp_path / "two", atol=1e-5)


CACHE_ARGS = ["cache.n_tokens=700", "cache.shard_tokens=100", "cache.batch_size=1",
              "cache.ctx_len=40"]


def test_torchrun_cache_equals_single_process_cache(model, tmp_path, one_thread):
    """Two ranks split the shards (rank r writes shards r, r+2, ...); the result is the
    single-process cache file for file: same key, shards, rows and row order."""
    from sae_med.artifacts import stable_hash
    from sae_med.cache.activations import ActivationCache, build_cache, cache_spec
    from sae_med.config import default_cache_dir, load_config

    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "models").symlink_to(default_cache_dir() / "models")  # no re-prepare
    (tmp_path / "cfg.yaml").write_text("train_corpora: [medical]\neval_corpora: []\n")
    # a killed writer's temp file in the cache folder is cleaned up by rank 0
    two_cfg = load_config(tmp_path / "cfg.yaml", [f"cache_dir={tmp_path / 'two'}", *CACHE_ARGS])
    stale_root = two_cfg.cache_path / "activations" / stable_hash(
        cache_spec(model, two_cfg, "medical", "train"))
    stale_root.mkdir(parents=True)
    (stale_root / ".shard_00000.npy.tmp").write_bytes(b"half a shard")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "sae_med.cli", "cache",
                           str(tmp_path / "cfg.yaml"), f"cache_dir={tmp_path / 'two'}",
                           "model.device=cpu", *CACHE_ARGS],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("cache medical/train: 700 tokens") == 2  # both ranks return it
    [root] = [p for p in (tmp_path / "two" / "activations").iterdir() if p.is_dir()]
    assert root == stale_root and not list(root.glob(".*.tmp"))
    two = ActivationCache(root)
    one = build_cache(model, load_config(None, [f"cache_dir={tmp_path / 'one'}", *CACHE_ARGS]),
                      "medical", "train", progress=False)
    assert two.key == one.key and len(one.shards) >= 4
    assert two.manifest["n_documents"] == one.manifest["n_documents"]
    assert [(s.rows, s.doc_start, s.doc_ids) for s in two.shards] == \
        [(s.rows, s.doc_start, s.doc_ids) for s in one.shards]
    assert torch.equal(two.token_info(), one.token_info())
    assert torch.equal(two.activations(), one.activations())
    assert two.doc_ids() == one.doc_ids() and two.n_tokens == one.n_tokens == 700


def test_helpers_are_identities_in_one_process():
    x = torch.randn(12, 5)
    assert not runtime.is_distributed() and runtime.world_size() == 1 and runtime.is_main()
    assert runtime.local_rows(x) is x
    t = torch.tensor([2.0, 3.0])
    assert torch.equal(runtime.all_reduce_sum_(t), torch.tensor([2.0, 3.0]))
    x_hat = x + 0.3 * torch.randn(12, 5)
    assert global_fve(x, x_hat) == pytest.approx(fve(x, x_hat), rel=1e-6)
    assert global_fve(x, x) == pytest.approx(1.0)
    assert runtime.init_from_env() is False  # no WORLD_SIZE: nothing to initialise
