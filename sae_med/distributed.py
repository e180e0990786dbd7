"""Data-parallel helpers for running sae-med under ``torchrun``.

``torchrun --nproc_per_node N sae-med train CONFIG`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`init_from_env` turns that into a process
group (NCCL when CUDA is available, gloo on CPU) and pins each rank to its GPU. Every
helper here is a no-op in a single process, so the package code calls them
unconditionally and behaves exactly as before without ``torchrun``.

Consistency model: every rank holds identical SAE parameters and optimiser state. Ranks
see different rows of each global batch, gradients are summed across ranks
(:func:`all_reduce_grads_`) before any step, and everything applied after that (parallel-
gradient removal, clipping, Adam, decoder renormalisation) is deterministic on identical
inputs, so the copies never drift apart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor

log = logging.getLogger(__name__)


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
    loss (see :func:`sae_med.train.train_step`)."""
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


def global_fve(x: Float[Tensor, "rows d_model"], x_hat: Float[Tensor, "rows d_model"]
               ) -> float:
    """:func:`sae_med.metrics.fve` of the whole global batch from each rank's rows: the sums
    of x, ‖x‖², r = x − x̂ and ‖r‖² are summed over ranks, then
    1 − SS(r) / SS(x) with SS the :func:`~sae_med.metrics.centred_sum_of_squares`."""
    from sae_med.metrics import centred_sum_of_squares

    x, r = x.double(), (x - x_hat).double()
    sums = torch.cat([x.sum(0), r.sum(0), x.pow(2).sum()[None], r.pow(2).sum()[None],
                      torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device)])
    all_reduce_sum_(sums)
    d = x.shape[1]
    x_sum, r_sum, (x_sq, r_sq, n) = sums[:d], sums[d:2 * d], sums[2 * d:]
    ss_x = centred_sum_of_squares(n, x_sum, x_sq)
    return float(1.0 - centred_sum_of_squares(n, r_sum, r_sq) / ss_x.clamp_min(1e-30))
