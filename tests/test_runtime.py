"""The dtype and kernel rule of :mod:`sae_med.runtime`: capability first, the probe where
that is ambiguous (both faked both ways), the probe cached once per machine, a real
AVX2-limited run, and the CI machine's own resolved dtype checked against its probe."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sae_med import runtime
from sae_med.cli import main
from sae_med.runtime import MachineProfile, auto_dtype, resolve_dtype

CPU = torch.device("cpu")
CACHED = (runtime.machine_profile, runtime.warn_if_bf16_slow)
"""The rule's per-process caches (taken before any test replaces them)."""


def _profile(bf16_ms: float, fp32_ms: float = 1.0, onednn_ms: float | None = 1.0
             ) -> MachineProfile:
    return MachineProfile(key="k", cpu="fake", fp32_ms=fp32_ms, bf16_ms=bf16_ms,
                          matmul_ms=2.0, onednn_ms=onednn_ms)


@pytest.fixture
def fresh_caches():
    """The rule's per-process caches emptied before and after a test that fakes it."""
    for fn in CACHED:
        fn.cache_clear()
    yield
    for fn in CACHED:
        fn.cache_clear()


@pytest.mark.parametrize("native", [True, False])
def test_capability_decides_without_a_probe(native, monkeypatch, fresh_caches):
    monkeypatch.setattr(runtime, "cpu_bf16_capability", lambda: native)
    monkeypatch.setattr(runtime, "machine_profile", lambda *a: pytest.fail("probed"))
    choice = auto_dtype(CPU)
    assert choice.dtype == ("bfloat16" if native else "float32")
    assert ("with native bf16" if native else "without native bf16") in choice.reason


@pytest.mark.parametrize("bf16_ms", [0.2, 30.0])
def test_an_ambiguous_capability_is_decided_by_the_probe(bf16_ms, monkeypatch, fresh_caches):
    monkeypatch.setattr(runtime, "cpu_bf16_capability", lambda: None)
    monkeypatch.setattr(runtime, "machine_profile", lambda *a: _profile(bf16_ms))
    choice = auto_dtype(CPU)
    assert choice.dtype == ("bfloat16" if bf16_ms < 1.0 else "float32")
    assert choice.reason.startswith("probe") and f"{bf16_ms:.2f} ms" in choice.reason


@pytest.mark.parametrize("supported", [True, False])
def test_cuda_uses_bf16_only_where_the_gpu_has_it(supported, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: supported)
    assert auto_dtype(torch.device("cuda")).dtype == ("bfloat16" if supported else "float32")


def test_isa_limits_make_the_capability_ambiguous(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert runtime.cpu_bf16_capability() is None


def test_explicit_bf16_runs_and_warns_once_where_it_is_slow(monkeypatch, caplog,
                                                            fresh_caches):
    monkeypatch.setattr(runtime, "cpu_bf16_capability", lambda: False)
    with caplog.at_level(logging.WARNING, logger="sae_med.runtime"):
        for _ in range(3):
            assert resolve_dtype("bfloat16", CPU) == ("bfloat16", "asked for")
    warnings = [r for r in caplog.records if "will be slow" in r.message]
    assert len(warnings) == 1 and "model.dtype: auto" in warnings[0].message
    assert resolve_dtype("float32", CPU).dtype == "float32"


def test_the_probe_runs_once_per_machine_and_is_cached_on_disk(tmp_path, monkeypatch,
                                                               fresh_caches):
    calls = []
    real = runtime.probe
    monkeypatch.setattr(runtime, "probe", lambda: calls.append(1) or real())
    first = runtime.machine_profile(tmp_path)
    path = runtime.profile_path(tmp_path)
    assert json.loads(path.read_text())["key"] == runtime.machine_key() == first.key
    runtime.machine_profile.cache_clear()  # a new process: reads the file, no probe
    assert runtime.machine_profile(tmp_path) == first and len(calls) == 1
    path.write_text("{damaged")
    runtime.machine_profile.cache_clear()
    assert runtime.machine_profile(tmp_path).key == first.key and len(calls) == 2


def test_a_cache_folder_that_cannot_be_written_costs_a_probe_not_the_run(
        tmp_path, caplog, fresh_caches):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="sae_med.runtime"):
        profile = runtime.machine_profile(blocked / "cache")
    assert profile.key == runtime.machine_key() and profile.fp32_ms > 0
    assert any("cannot keep this machine's probe" in r.message for r in caplog.records)


@pytest.mark.parametrize("onednn_ms", [0.5, 5.0, None])
def test_the_fp32_product_takes_the_faster_kernel_with_the_same_result(
        onednn_ms, monkeypatch, fresh_caches):
    monkeypatch.setattr(runtime, "machine_profile", lambda *a: _profile(1.0, 1.0, onednn_ms))
    assert runtime.use_onednn_linear() == (onednn_ms == 0.5 and runtime.onednn_linear_works())
    x, W = torch.randn(9, 64), torch.randn(300, 64)
    torch.testing.assert_close(runtime.fp32_linear(x, W), F.linear(x, W))


def test_an_avx2_limited_cpu_resolves_auto_to_fp32_by_its_probe(tmp_path):
    """oneDNN and ATen held to AVX2 (what an AVX2-only CPU runs): bf16 products fall to
    a slow path, and the probe, not the CPU's flags, picks fp32."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
           "SAE_MED_CACHE": str(tmp_path)}
    code = ("import torch; from sae_med.runtime import auto_dtype; "
            "print(auto_dtype(torch.device('cpu')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "dtype='float32'" in out and "probe under" in out


def test_the_dtype_resolved_on_this_machine_is_not_slower_than_fp32(fresh_caches):
    """CI tells: the dtype ``model.dtype: auto`` picks on the machine running the tests
    must not lose to fp32 in a fresh probe of its products."""
    choice = auto_dtype(CPU)
    fresh = runtime.probe()
    if choice.dtype == "bfloat16":
        assert fresh.bf16_ms < fresh.fp32_ms, (choice, fresh)
    else:
        assert choice.dtype == "float32"


def test_config_prints_the_resolved_dtype_and_why(capsys):
    assert main(["config", "configs/default.yaml"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    choice = auto_dtype(CPU)
    assert last == f"# model.dtype auto -> {choice.dtype} here: {choice.reason}"
