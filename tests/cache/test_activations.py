"""The activation cache against a plain TransformerLens run, plus its hashing and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sae_med.cache.activations import ActivationCache, CorruptCacheError, build_cache
from sae_med.config import load_config
from sae_med.corpora import registry
from sae_med.corpora.registry import iter_documents


def small_cfg(cache_root, *extra):
    return load_config(None, [f"cache_dir={cache_root}", "cache.n_tokens=600",
                              "cache.shard_tokens=200", "cache.batch_size=4",
                              "cache.ctx_len=48", *extra])


@pytest.fixture(scope="module")
def medical_cache(model, cache_root):
    return build_cache(model, small_cfg(cache_root), "medical", "train", progress=False)


def test_cache_equals_run_with_cache(model, medical_cache):
    cfg = small_cfg("/unused")
    info = medical_cache.token_info()
    acts = medical_cache.activations()
    assert acts.shape == (600, model.d_model) and medical_cache.n_tokens == 600
    docs = {d.doc_id: d for _, d in zip(range(200), iter_documents("medical", "train"),
                                         strict=False)}
    doc_ids = medical_cache.doc_ids()
    for di in sorted(set(info[:, 1].tolist()))[:6]:
        rows = info[:, 1] == di
        tokens = model.tokenizer(docs[doc_ids[di]].text, return_tensors="pt", truncation=True,
                                 max_length=cfg.cache.ctx_len).input_ids
        _, tl_cache = model.transformer_lens().run_with_cache(
            tokens, names_filter=cfg.model.hook_name)
        ref = tl_cache[cfg.model.hook_name][0, info[rows, 2].long()]
        assert torch.equal(tokens[0, info[rows, 2].long()], info[rows, 0])
        torch.testing.assert_close(acts[rows], ref, rtol=1e-4, atol=ref.abs().max() * 1e-5)


def test_cache_reports_tokens_cut_by_ctx_len_as_corpora_counts_them(
        model, tmp_path, long_recipes):
    """A corpus of long and short documents, cached whole with contexts shorter than the
    long ones: the manifest's counted tokens are `sae-med corpora`'s count, and what was
    cached is that count less the cut, as `sae-med corpora`'s cached column predicts."""
    ctx_len = 24
    cfg = small_cfg(tmp_path / "cache", f"cache.ctx_len={ctx_len}", "cache.n_tokens=100000",
                    'corpora={"recipes": {"files": "recipes", "domain": "cooking"}}')
    cache = build_cache(model, cfg, "recipes", "train", progress=False)
    assert cache.manifest["exhausted"] and cache.cut_tokens > 0
    assert cache.n_tokens == cache.counted_tokens - cache.cut_tokens
    stats = registry.corpus_stats("recipes", model.tokenizer, "train", ctx_len=ctx_len)
    assert (stats.tokens, stats.cached) == (cache.counted_tokens, cache.n_tokens)


def test_special_tokens_excluded(model, medical_cache):
    info = medical_cache.token_info()
    tok = model.tokenizer
    assert not torch.isin(info[:, 0], torch.tensor([tok.bos_token_id, tok.pad_token_id,
                                                    tok.eos_token_id])).any()
    assert (info[:, 2] > 0).all()  # position 0 is always BOS


def test_same_config_reuses_and_changed_config_rebuilds(model, cache_root, medical_cache):
    shard = medical_cache.root / "shard_00000.npy"
    mtime = shard.stat().st_mtime_ns
    again = build_cache(model, small_cfg(cache_root), "medical", "train", progress=False)
    assert again.root == medical_cache.root
    assert shard.stat().st_mtime_ns == mtime  # reused, not rewritten
    other = build_cache(model, small_cfg(cache_root, "cache.ctx_len=32"), "medical", "train",
                        progress=False)
    assert other.root != medical_cache.root
    assert other.spec["ctx_len"] == 32 and other.token_info()[:, 2].max() < 32


def test_corrupted_shard_is_named(model, cache_root, tmp_path):
    import shutil

    src = build_cache(model, small_cfg(cache_root), "medical", "train", progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(src.root, copy)
    shard = copy / "shard_00001.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match="shard_00001.npy"):
        ActivationCache(copy)


def test_bf16_storage_is_close_to_fp32(model, cache_root, medical_cache):
    bf = build_cache(model, small_cfg(cache_root, "cache.dtype=bfloat16"), "medical", "train",
                     progress=False)
    assert bf.root != medical_cache.root
    assert np.load(bf.root / "shard_00000.npy", mmap_mode="r").dtype == np.uint16
    a, b = medical_cache.activations(), bf.activations()
    assert torch.equal(bf.token_info(), medical_cache.token_info())
    rel = (a - b).norm(dim=-1) / a.norm(dim=-1)
    assert rel.max() < 1e-2
    # the reader keeps bf16 windows and hands out float32 batches: the fp32 cache's batch
    # rounded to bf16, row for row
    batch = next(bf.iter_batches(100, seed=3, start_batch=2))
    assert batch.dtype == torch.float32
    ref = next(medical_cache.iter_batches(100, seed=3, start_batch=2))
    assert torch.equal(batch, ref.to(torch.bfloat16).float())


def test_reader_shuffles_every_row_once_per_epoch(medical_cache):
    it = medical_cache.iter_batches(100, seed=3)
    epoch = torch.cat([next(it) for _ in range(6)])
    ordered = medical_cache.activations()
    assert not torch.equal(epoch, ordered)
    key = lambda t: sorted(map(tuple, t[:, :4].tolist()))  # noqa: E731
    assert key(epoch) == key(ordered)
    resumed = medical_cache.iter_batches(100, seed=3, start_batch=4)
    assert torch.equal(next(resumed), epoch[400:500])


RESUME_SCRIPT = """
import sys
from sae_med.cache.activations import build_cache
from sae_med.config import load_config
from sae_med.lm.load import load_model
cfg = load_config(None, sys.argv[1:])
build_cache(load_model(device="cpu"), cfg, "medical", "train", progress=False)
"""


def test_interrupted_cache_resumes_to_the_same_result(model, tmp_path):
    args = ["cache.n_tokens=3000", "cache.shard_tokens=150", "cache.batch_size=2",
            "cache.ctx_len=48"]
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, f"cache_dir={killed_dir}",
                             *args], env={**os.environ, "TQDM_DISABLE": "1"})
    deadline = time.time() + 300
    shard_json = None
    while time.time() < deadline and proc.poll() is None:
        found = sorted(killed_dir.glob("activations/*/shard_00002.json"))
        if found:
            shard_json = found[0]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert shard_json is not None, "the cache run never wrote a shard"
    root = shard_json.parent
    assert not (root / "manifest.json").exists()
    written = len(list(root.glob("shard_*.json")))
    resumed = build_cache(model, load_config(None, [f"cache_dir={killed_dir}", *args]),
                          "medical", "train", progress=False)
    assert written >= 3 and json.loads((root / "manifest.json").read_text())["n_tokens"] == 3000
    clean = build_cache(model, load_config(None, [f"cache_dir={clean_dir}", *args]),
                        "medical", "train", progress=False)
    assert resumed.root.name == clean.root.name
    assert torch.equal(resumed.token_info(), clean.token_info())
    assert torch.equal(resumed.activations(), clean.activations())
    assert resumed.doc_ids() == clean.doc_ids()


def test_batches_equal_the_concatenated_shuffled_stream():
    """Naive twin of iter_batches: concatenate the shuffled windows, cut every batch_size."""
    from sae_med.cache.batches import TensorBatchSource

    src = TensorBatchSource(torch.randn(1000, 3), chunk_rows=70, window=3)
    blocks, have = [], 0
    for block, _ in src._rows_stream(seed=5, start_row=0):
        blocks.append(block.clone())  # blocks are views of a reused buffer
        have += block.shape[0]
        if have > 2600:
            break
    flat = torch.cat(blocks)
    for batch_size in (64, 250, 333):
        it = src.iter_batches(batch_size, seed=5)
        for k in range(2600 // batch_size):
            assert torch.equal(next(it), flat[k * batch_size:(k + 1) * batch_size])


RSS_SCRIPT = """
import sys
import torch
from pathlib import Path
from sae_med.cache.activations import ActivationCache, PlanEnd, _finish, _write_shard
torch.set_num_threads(1)
root, mode = Path(sys.argv[1]), sys.argv[2]
n_shards, rows, d = 96, 4096, 256          # 96 shards of 4 MiB: a 384 MiB fp32 cache
if mode == "write":
    base = torch.randn(rows, d, generator=torch.Generator().manual_seed(0))
    shards = [_write_shard(root, i, base + i, torch.zeros(rows, 3, dtype=torch.int32), i,
                           [f"doc{i}"], "float32") for i in range(n_shards)]
    _finish(root, {"dtype": "float32", "hook": "synthetic", "n_tokens": n_shards * rows,
                   "ctx_len": rows}, shards, PlanEnd(n_shards, False, n_shards * rows, 0),
            "synthetic", "train")
    sys.exit(0)

def status(field):
    return next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status")
                if ln.startswith(field))

cache = ActivationCache(root, window=4)     # verifies every sha256 (plain reads)
cache.activations(0, 4096)                  # first-call allocations, not the stream's
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before, seen, means = status("VmRSS"), 0, []
batches = (cache.iter_batches(4096, seed=0) if mode == "shuffled"
           else cache.iter_ordered(4096))
for b in batches:
    means.append(float(b[:, 0].mean()))
    seen += b.shape[0]
    if seen >= cache.n_tokens:
        break
print(seen, status("VmHWM") - before, sum(means))
"""


@pytest.mark.parametrize("mode", ["shuffled", "ordered"])
def test_streaming_a_cache_keeps_resident_memory_bounded(tmp_path, mode):
    """Read every row of a 384 MiB cache (96 shards of 4 MiB) and check the reader's peak
    RSS growth: the shuffled stream holds two window buffers of 4 shards plus a few 4 MiB
    batches (bound 2 windows + 48 MiB = 80 MiB, measured 59-63 MiB); the ordered pass holds
    a few batches (bound 24 MiB + 4 batches = 40 MiB, measured 11-29 MiB). With
    memory-mapped shards the shuffled pass grew by more than the whole cache (~512 MiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = tmp_path / "cache"
    subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(root), "write"], env=env,
                   check=True, timeout=300)
    cache_bytes = sum(p.stat().st_size for p in root.glob("shard_*.npy"))
    assert cache_bytes > 380 * 2**20
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(root), mode], env=env,
                         check=True, capture_output=True, text=True, timeout=300)
    seen, growth, _ = out.stdout.split()
    assert int(seen) == 96 * 4096
    mib = 2**20
    bound = 2 * 4 * 4 * mib + 48 * mib if mode == "shuffled" else 24 * mib + 4 * 4 * mib
    assert int(growth) < bound, f"peak RSS grew {int(growth) / mib:.0f} MiB"
    assert bound < cache_bytes / 4
