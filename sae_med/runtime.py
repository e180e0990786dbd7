"""What this machine computes fast: the dtype of the model's forwards and the fp32 product
kernel, decided the same way everywhere.

bf16 is fast only where the hardware has native bf16 arithmetic (a CUDA GPU that supports
it; a CPU with AMX or AVX-512 BF16); without it, as on AVX2-only CPUs, a bf16 matmul can
run two orders of magnitude slower than fp32. The decision reads the capability first and,
where that is ambiguous (another architecture, or ISA limits set in the environment),
times a probe of about a second, measured once per machine and cached under the sae-med
cache folder (:func:`machine_profile`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from sae_med.artifacts import (
    artifact_lock,
    stable_hash,
    write_json_atomic,
)
from sae_med.config import ConfigError, default_cache_dir

log = logging.getLogger(__name__)

Dtype = Literal["float32", "bfloat16"]

ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
           "MKL_ENABLE_INSTRUCTIONS")
"""Environment variables that make torch, oneDNN or MKL use less than the CPU offers: with
any of them set the CPU's flags no longer say what runs, so the probe decides."""

PROBE_SHAPE = (64, 640, 640)
"""(rows, d_in, d_out) of the probe's products: a model's width, small enough that a
bf16 product without native arithmetic (~1 GFLOP/s) still takes only tens of ms."""
KERNEL_PROBE_SHAPE = (128, 640, 16384)
"""(rows, d_in, d_out) of the fp32 kernel probe: a chunk of rows through a wide product,
the shape of the unembedding and of the SAE encoder."""
PROBE_ROUNDS = 40
PROBE_BUDGET_S = 0.3
"""Seconds each of the probe's two races may take (see :func:`_race_ms`)."""
PROFILE_VERSION = 2
"""Bumped when the probe measures differently (2: one thread, alternating rounds), so no
profile of another method is read back."""


class DtypeChoice(NamedTuple):
    """The dtype a stage runs in and why."""

    dtype: Dtype
    reason: str


@dataclass(frozen=True)
class MachineProfile:
    """Probe timings of this machine (best of alternating rounds, milliseconds)."""

    key: str
    """Hash of what determines the timings' ranking (CPU, flags, torch, ISA limits)."""
    cpu: str
    fp32_ms: float
    """fp32 product of :data:`PROBE_SHAPE`."""
    bf16_ms: float
    """The same product in bf16."""
    matmul_ms: float
    """fp32 ``F.linear`` of :data:`KERNEL_PROBE_SHAPE`."""
    onednn_ms: float | None
    """The same through oneDNN's linear (None: not available in this torch)."""

    @property
    def bf16_fast(self) -> bool:
        """Whether the bf16 product beats the fp32 one."""
        return self.bf16_ms < self.fp32_ms

    @property
    def onednn_fast(self) -> bool:
        """Whether oneDNN's fp32 linear beats ``F.linear``."""
        return self.onednn_ms is not None and self.onednn_ms < self.matmul_ms


# ------------------------------------------------------------------------- capability
def cpu_info() -> tuple[str, str]:
    """(model name, flags) from /proc/cpuinfo; where it has no such fields (no file, or an
    Arm CPU's "Features"), ``platform.processor()`` and ""."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor(), ""
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", platform.processor()), fields.get("flags", "")


def isa_limits() -> dict[str, str]:
    """The :data:`ISA_ENV` variables set in this process."""
    return {k: os.environ[k] for k in ISA_ENV if os.environ.get(k)}


def cpu_bf16_capability() -> bool | None:
    """True: the CPU has native bf16 arithmetic (AMX or AVX-512 BF16) and nothing limits
    its use; False: an x86 CPU without it; None: ambiguous (another architecture, torch
    cannot say, or :data:`ISA_ENV` limits what runs)."""
    if isa_limits() or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    checks = [getattr(torch.cpu, name, None) for name in
              ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(c is None for c in checks):
        return None
    return any(c() for c in checks)


# ------------------------------------------------------------------------- the probe
def _race_ms(fns: Sequence[Callable[[], object]], budget_s: float) -> list[float]:
    """Each ``fn``'s best time in ms, timed in alternating rounds (at most
    :data:`PROBE_ROUNDS`, stopping once ``budget_s`` is spent) after one warm-up call each,
    so that a busy spell of the machine hits every side alike."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    end = time.perf_counter() + budget_s
    for _ in range(PROBE_ROUNDS):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
        if time.perf_counter() > end:
            break
    return [b * 1e3 for b in best]


def onednn_linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """x Wᵀ + b through oneDNN's fp32 linear (``x`` 2-D, ``W`` (out, in) like
    ``F.linear``'s); callers check :func:`onednn_linear_works` or
    :func:`use_onednn_linear` first."""
    return torch.ops.mkldnn._linear_pointwise(x, W, b, "none", [], "")


@functools.cache
def onednn_linear_works() -> bool:
    """Whether torch has oneDNN's fp32 linear (``mkldnn._linear_pointwise``) and it
    computes a tiny product right."""
    try:
        out = onednn_linear(torch.ones(2, 3), torch.ones(4, 3))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.backends.mkldnn.is_available()
                and torch.equal(out, torch.full((2, 4), 3.0)))


def probe() -> MachineProfile:
    """Time this machine's products now (about a second; nothing cached), on one thread:
    what a core computes fast decides both choices (the kernels rank alike on one thread
    and on two), and one thread never waits for another to be scheduled on a busy
    machine, which on two threads could make a product 50x slower for a while."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _probe_products()
    finally:
        torch.set_num_threads(threads)


def _probe_products() -> MachineProfile:
    gen = torch.Generator().manual_seed(0)
    m, k, n = PROBE_SHAPE
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    a16, b16 = a.bfloat16(), b.bfloat16()
    m, k, n = KERNEL_PROBE_SHAPE
    x, W = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    cpu, _ = cpu_info()
    fp32_ms, bf16_ms = _race_ms([lambda: a @ b, lambda: a16 @ b16], PROBE_BUDGET_S)
    kernels = [lambda: F.linear(x, W)]
    if onednn_linear_works():
        kernels.append(lambda: onednn_linear(x, W))
    matmul_ms, *onednn_ms = _race_ms(kernels, PROBE_BUDGET_S)
    return MachineProfile(key=machine_key(), cpu=cpu, fp32_ms=fp32_ms, bf16_ms=bf16_ms,
                          matmul_ms=matmul_ms, onednn_ms=onednn_ms[0] if onednn_ms else None)


def machine_key() -> str:
    cpu, flags = cpu_info()
    return stable_hash({"cpu": cpu, "flags": flags, "arch": platform.machine(),
                        "torch": torch.__version__, "isa": isa_limits(),
                        "version": PROFILE_VERSION})


def profile_path(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "machine" / f"profile-{machine_key()}.json"


@functools.cache
def machine_profile(cache_dir: Path | None = None) -> MachineProfile:
    """This machine's :class:`MachineProfile`: read from the cache folder, or probed once
    (under a lock, so concurrent processes probe once) and written there. A cache folder
    that cannot be written costs a probe per process (with a warning), never the run."""
    path = profile_path(cache_dir)
    try:
        with artifact_lock(path.with_suffix(".lock"), "the machine profile"):
            profile = _read_profile(path)
            if profile is None:
                profile = probe()
                write_json_atomic(path, asdict(profile))
                _log_probe(profile)
    except OSError as err:
        log.warning("cannot keep this machine's probe in %s (%s); probing in this process",
                    path.parent, err)
        profile = probe()
        _log_probe(profile)
    return profile


def _read_profile(path: Path) -> MachineProfile | None:
    """The profile at ``path`` if it is this machine's; None if missing or unreadable."""
    try:
        profile = MachineProfile(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return profile if profile.key == machine_key() else None


def _log_probe(p: MachineProfile) -> None:
    log.info("probed this machine (%s): fp32 %.2f ms, bf16 %.2f ms, F.linear %.1f ms, "
             "oneDNN %s ms", p.cpu, p.fp32_ms, p.bf16_ms, p.matmul_ms,
             f"{p.onednn_ms:.1f}" if p.onednn_ms else "-")


# ------------------------------------------------------------------------- decisions
def auto_dtype(device: torch.device, cache_dir: Path | None = None) -> DtypeChoice:
    """``model.dtype: auto``: bf16 where it is fast, fp32 elsewhere, with the reason."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return DtypeChoice("bfloat16" if ok else "float32",
                           f"CUDA device {'with' if ok else 'without'} native bf16")
    if device.type != "cpu":
        return DtypeChoice("float32", f"{device.type} device: fp32 is the safe choice")
    native = cpu_bf16_capability()
    if native is not None:
        return DtypeChoice("bfloat16" if native else "float32",
                           "CPU with native bf16 (AMX or AVX-512 BF16)" if native else
                           "CPU without native bf16 (no AMX, no AVX-512 BF16)")
    p = machine_profile(cache_dir)
    limits = f" under {isa_limits()}" if isa_limits() else ""
    return DtypeChoice("bfloat16" if p.bf16_fast else "float32",
                       f"probe{limits}: bf16 product {p.bf16_ms:.2f} ms vs fp32 "
                       f"{p.fp32_ms:.2f} ms")


def resolve_dtype(requested: str, device: torch.device, cache_dir: Path | None = None
                  ) -> DtypeChoice:
    """The dtype ``model.dtype`` means on ``device``: ``auto`` decided by
    :func:`auto_dtype`; an explicit dtype as asked (bf16 warns once when it will be slow)."""
    if requested == "auto":
        return auto_dtype(device, cache_dir)
    if requested == "bfloat16":
        warn_if_bf16_slow(device, "model.dtype: bfloat16", cache_dir)
    return DtypeChoice(requested, "asked for")  # type: ignore[arg-type]


@functools.cache
def warn_if_bf16_slow(device: torch.device, what: str, cache_dir: Path | None = None
                      ) -> bool:
    """Log one warning (per process and ``what``) when bf16 is slow on ``device``;
    returns whether it is."""
    choice = auto_dtype(device, cache_dir)
    slow = choice.dtype != "bfloat16"
    if slow:
        log.warning("%s will be slow here (%s); model.dtype: auto picks the fast dtype",
                    what, choice.reason)
    return slow


def use_onednn_linear() -> bool:
    """Whether fp32 products on CPU go through oneDNN's linear: it works here and the
    machine's probe found it faster than ``F.linear``."""
    return onednn_linear_works() and machine_profile().onednn_fast


def fp32_linear(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``x W^T`` for fp32 CPU tensors (``W`` as ``(d_out, d_in)``, contiguous) through the
    faster of oneDNN's linear and ``F.linear`` on this machine; ``F.linear`` elsewhere."""
    if (x.device.type == "cpu" and x.dtype == W.dtype == torch.float32 and x.dim() == 2
            and W.is_contiguous() and use_onednn_linear()):
        return onednn_linear(x.contiguous(), W)
    return F.linear(x, W)


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → the current CUDA device when available (under torchrun, the rank's own
    GPU, set by :func:`sae_med.runtime.init_from_env`), else CPU; anything else is
    passed to torch."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    check_device_available(device)
    return torch.device(device)


def check_device_available(device: str) -> None:
    """A one-line :class:`ConfigError` for a device this machine does not have."""
    dev = torch.device(device)
    count = torch.cuda.device_count() if dev.type == "cuda" else 1
    if dev.type == "mps" and not torch.backends.mps.is_available() or (
            dev.type == "cuda" and (dev.index or 0) >= count):
        raise ConfigError(f"device {device!r} is not available on this machine "
                          f"({count if dev.type == 'cuda' else 0} {dev.type} devices); "
                          f"use device=auto or cpu")


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes shared files and logs metrics."""
    return rank() == 0


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Returns True when a group of more than one rank is (now) active. Without
    ``WORLD_SIZE`` (a plain ``sae-med`` call) or with ``WORLD_SIZE=1`` nothing happens.
    """
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    log.info("process group: rank %d of %d (%s)", dist.get_rank(), ws, backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _reduce(t: Tensor, op: dist.ReduceOp.RedOpType) -> Tensor:
    if is_distributed():
        dist.all_reduce(t, op=op)
    return t


def all_reduce_sum_(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks, in place; returns ``t``."""
    return _reduce(t, dist.ReduceOp.SUM)


def all_reduce_max_(t: Tensor) -> Tensor:
    """Elementwise max of ``t`` over ranks, in place; returns ``t``."""
    return _reduce(t, dist.ReduceOp.MAX)


def all_reduce_grads_(params: Iterable[torch.nn.Parameter], extra: Tensor | None = None
                      ) -> None:
    """Sum every parameter's ``.grad`` (and the 1-D ``extra``, e.g. metric shares) over
    ranks, in place, through one flat buffer: one collective per step instead of one per
    tensor.

    Each rank's loss is already scaled so that the sum is the gradient of the global-batch
    loss (see :func:`sae_med.train.step.train_step`)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    parts = [g.reshape(-1).float() for g in grads]
    if extra is not None:
        parts.append(extra.reshape(-1).float())
    if not parts:
        return
    flat = torch.cat(parts)
    dist.all_reduce(flat)
    offset = 0
    for t in [*grads, *([extra] if extra is not None else [])]:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank, in place."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def local_rows(x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "rows d_model"]:
    """This rank's contiguous slice of a global batch (rank r takes rows r*B/W..(r+1)*B/W)."""
    ws = world_size()
    if ws == 1:
        return x
    if x.shape[0] % ws:
        raise ValueError(f"batch of {x.shape[0]} rows does not split over {ws} ranks")
    n = x.shape[0] // ws
    return x[rank() * n:(rank() + 1) * n]
