"""Streaming training: activations made by the model on the fly (a tiny random Gemma-2 on
the real medical corpus) are the cache's rows, shuffled; a killed streamed run resumes from
its checkpoint's stream position to the same weights, in one process and under torchrun,
where ranks read disjoint documents; what a stream cuts at cache.ctx_len is counted as a
cache counts it."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from sae_med.cache.activations import build_cache
from sae_med.cache.stream import ActivationStream
from sae_med.config import ConfigError, load_config
from sae_med.corpora import registry
from sae_med.layout import CHECKPOINT_NAME
from sae_med.lm.load import load_model
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.train.checkpoint import read_checkpoint
from sae_med.train.schedule import batch_seed
from sae_med.train.sweep import train_saes

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_gemma2(tiny_lm_dirs):
    return load_model(str(tiny_lm_dirs["gemma2"]), device="cpu")


def stream_config(tmp_path, *overrides: str):
    """Chunks of 16 documents of <= 32 tokens (~500 rows), one chunk per 300-row buffer;
    16 steps of 64 rows, checkpoints every 4."""
    return load_config(REPO / "configs/smoke.yaml", [
        "model.name=tiny", "model.hook_layer=1", f"cache_dir={tmp_path / 'cache'}",
        "train_corpora=[medical]", "eval_corpora=[medical]", "cache.ctx_len=32",
        "cache.batch_size=2", "cache.shard_tokens=512", "sae.width=64", "sae.l0_targets=[4]",
        "train.source=stream", "train.stream_buffer_tokens=300", "train.batch_size=64",
        "train.n_tokens=1024", "train.norm_batches=2", "train.checkpoint_every=4",
        "train.log_every=4", *overrides])


def test_stream_rows_are_the_cache_rows_shuffled(tiny_gemma2, tmp_path):
    cfg = stream_config(tmp_path)
    cache = build_cache(tiny_gemma2, cfg, "medical", "train", n_tokens=2048, progress=False)
    cached = Counter(row.numpy().tobytes() for row in cache.activations())
    it = ActivationStream(tiny_gemma2, cfg, "medical").iter_batches(64, seed=0)
    streamed = torch.cat([next(it) for _ in range(16)])  # 1024 rows, < 2048 - one chunk
    rows = Counter(row.numpy().tobytes() for row in streamed)
    assert rows <= cached  # (a random model repeats rows: shared prefixes)
    assert not torch.equal(streamed, cache.activations(0, 1024))  # shuffled
    # same seed, same batches; another seed, another order of the same buffers
    again = ActivationStream(tiny_gemma2, cfg, "medical").iter_batches(64, seed=0)
    assert torch.equal(torch.cat([next(again) for _ in range(16)]), streamed)
    other = ActivationStream(tiny_gemma2, cfg, "medical").iter_batches(64, seed=1)
    assert not torch.equal(next(other), streamed[:64])


def test_stream_counts_what_ctx_len_cuts_as_a_cache_does(tiny_gemma2, tmp_path, long_recipes,
                                                        caplog):
    """Recipes longer than the context, streamed past one pass: the stream's tally of a
    pass is `sae-med corpora`'s count (every token, and the cached ones it streamed), it
    warns when the pass ends naming the cut, and the second pass counts nothing twice."""
    cfg = stream_config(tmp_path, "cache.ctx_len=24", "train_corpora=[recipes]",
                        'corpora={"recipes": {"files": "recipes", "domain": "cooking"}}')
    stream = ActivationStream(tiny_gemma2, cfg, "recipes")
    stats = registry.corpus_stats("recipes", tiny_gemma2.tokenizer, "train", ctx_len=24)
    with caplog.at_level(logging.WARNING, logger="sae_med.cache.stream"):
        batches = stream.iter_batches(16, seed=0)
        rows = 0
        while rows <= 2 * stats.cached:  # into the third pass
            rows += next(batches).shape[0]
    tally = stream.tally
    assert tally.complete and tally.cut_tokens > 0
    assert (tally.documents, tally.counted_tokens, tally.rows) == (
        stats.documents, stats.tokens, stats.cached)
    assert tally.rows == tally.counted_tokens - tally.cut_tokens
    [warning] = [r.getMessage() for r in caplog.records]  # once, not per pass
    assert "stream of recipes/train ran out after pass 1" in warning
    assert (f"{tally.rows:,} tokens streamed from all its {tally.documents:,} documents read: "
            f"{tally.counted_tokens:,} tokens counted, {tally.cut_tokens:,} of them cut by "
            f"cache.ctx_len=24") in warning


class CountingStream(ActivationStream):
    """Records the (epoch, document) each chunk it runs through the model starts at; raises
    at training batch
    ``fail_at`` (a killed process)."""

    def __init__(self, *args, fail_at: int = -1, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_at, self.chunk_starts = fail_at, []

    def _chunks(self, epoch, doc):
        for chunk in super()._chunks(epoch, doc):
            self.chunk_starts.append(chunk[:2])
            yield chunk

    def iter_batches(self, batch_size, seed, start_batch=0):
        for i, b in enumerate(super().iter_batches(batch_size, seed, start_batch),
                              start_batch):
            if seed == batch_seed(self.cfg.seed, 0) and i == self.fail_at:
                raise RuntimeError("simulated kill")
            yield b


def test_killed_streamed_run_resumes_to_the_same_weights(tiny_gemma2, tmp_path):
    cfg = stream_config(tmp_path)  # 16 steps, checkpoints every 4; ~5 batches per buffer
    [ref] = train_saes(cfg, CountingStream(tiny_gemma2, cfg, "medical"), tmp_path / "ref",
                       progress=False, train_corpus="medical")
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_saes(cfg, CountingStream(tiny_gemma2, cfg, "medical", fail_at=14),
                   tmp_path / "run", progress=False, train_corpus="medical")
    state = read_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert state["step"] == 12
    [position] = state["source"]
    assert position["buffer"] > 0 and position["doc"] > 0  # a position past the start
    fresh = CountingStream(tiny_gemma2, cfg, "medical")  # a new process knows no positions
    [resumed] = train_saes(cfg, fresh, tmp_path / "run", resume=True, progress=False,
                           train_corpus="medical")
    # it started at the recorded buffer: no document before it ran through the model again
    assert fresh.chunk_starts[0] == (0, position["doc"])
    a, b = JumpReLUSAE.load(ref.path), JumpReLUSAE.load(resumed.path)
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y), name


def test_ranks_read_disjoint_documents(tiny_gemma2, tmp_path):
    cfg = stream_config(tmp_path)
    [(_, _, first), (_, _, second)] = [c for _, c in zip(
        range(2), ActivationStream(tiny_gemma2, cfg, "medical")._chunks(0, 0), strict=False)]
    ranks = [next(ActivationStream(tiny_gemma2, cfg, "medical", rank=r, world_size=2)
                  ._chunks(0, 0)) for r in (0, 1)]
    both = first + second
    assert ranks[0] == (0, 0, both[0::2]) and ranks[1] == (0, 0, both[1::2])
    keys = {ActivationStream(tiny_gemma2, cfg, "medical", rank=r, world_size=w).key
            for r, w in ((0, 1), (0, 2), (1, 2))}
    assert len(keys) == 2  # the world size changes the stream; the rank does not


def test_config_names_the_source():
    with pytest.raises(ConfigError, match="train.source"):
        load_config(None, ["train.source=disk"])
    assert load_config("configs/paper_gemma2_2b.yaml").train.source == "stream"


TORCHRUN_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[1])
    from test_stream import CountingStream, stream_config
    from sae_med import runtime
    from sae_med.lm.load import load_model
    from sae_med.sae.jumprelu import JumpReLUSAE
    from sae_med.train.checkpoint import read_checkpoint
    from sae_med.train.sweep import train_saes
    torch.set_num_threads(1)
    runtime.init_from_env()
    tmp, model_dir = map(__import__("pathlib").Path, sys.argv[2:4])
    model, cfg = load_model(str(model_dir), device="cpu"), stream_config(tmp)
    def run(out, **kw):
        resume = kw.pop("resume", False)
        src = CountingStream(model, cfg, "medical", **kw)
        return src, train_saes(cfg, src, tmp / out, resume=resume, progress=False,
                               train_corpus="medical")
    try:
        run("run", fail_at=14)
    except RuntimeError as e:
        assert "simulated kill" in str(e)
    fresh, [resumed] = run("run", resume=True)
    positions = read_checkpoint(tmp / "run" / "checkpoint.pt")["source"]
    _, [ref] = run("ref")
    a, b = JumpReLUSAE.load(ref.path), JumpReLUSAE.load(resumed.path)
    same = all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    print(f"rank {runtime.rank()} same {same} positions {len(positions)} "
          f"restart {fresh.chunk_starts[0]}")
""")


def test_killed_streamed_run_resumes_under_torchrun(tiny_lm_dirs, tmp_path):
    """Two ranks (gloo): each streams its own documents, the checkpoint holds both ranks'
    positions, and a run killed at step 14 resumes to the weights of an uninterrupted
    2-rank run."""
    script = tmp_path / "stream_ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(REPO / "tests" / "cache"),
                           str(tmp_path), str(tiny_lm_dirs["gemma2"])],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        # the ranks share one stdout: find each report wherever the other's output put it
        found = re.search(rf"rank {rank} same \w+ positions \d+ restart \([^)]*\)",
                          done.stdout)
        assert found, f"no report from rank {rank} in stdout {done.stdout[-2000:]!r}"
        # each rank consumes half the rows per step, so the step-12 checkpoint still lies
        # in the first buffer of each rank's stream: the restart recomputes that buffer
        # (the mid-stream restart is checked single-process above)
        assert found.group(0).endswith(" same True positions 2 restart (0, 0)"), found[0]
