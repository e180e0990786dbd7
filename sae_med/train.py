"""Train a sweep of JumpReLU SAEs (one per target L0) from one pass over activation batches.

Every batch is read once and fed to every SAE of the sweep. The recipe is the paper's
(PAPER.md): loss = sum_dims (x - x_hat)^2 (mean over batch) + a sparsity term, either
``target_l0``: c (L0/L0_target - 1)^2 or ``l0_penalty``: lambda L0, with L0 through the
Heaviside straight-through estimator and the coefficient warmed up linearly; Adam
(beta1 = 0), linear lr warmup and a linear decay to 0 over the last ``lr_decay_frac`` of the
steps, grad-norm clipping, decoder-parallel gradient removed before and decoder rows
renormalised after each step, and one input scale (E||x scale||^2 = 1) estimated on a
separate stream and folded into the saved weights (with ``train.center_inputs`` the SAE
trains on the centred x - E[x], and the mean is folded into its biases too).

Under ``torchrun`` the sweep trains data-parallel (see :mod:`sae_med.distributed`): every
rank reads the same global batch and keeps its slice of the rows, gradients are summed
across ranks before each identical update, metrics are those of the global batch, and
rank 0 alone writes metrics, checkpoints and the final SAEs. ``train.compile`` hands the
dense forward/backward of each SAE to torch.compile.

A sweep is one (training corpus, seed replicate): its SAEs share the replicate's batch
order (:func:`batch_seed`), which is what lets them train from one pass, and each has its
own initialisation (:func:`init_seed`), so replicate variance covers both.

Layout of ``out_dir`` (one sweep; :mod:`sae_med.experiment` puts replicate ``r`` of corpus
``c`` in ``saes/{c}/seed_{r}``)::

    config.json            resolved config of the run
    checkpoint.pt          latest atomic checkpoint (weights, Adam, step, RNG, scale)
    checkpoint.prev.pt     the one before it, kept until the new one is written and verified
    checkpoint.json        sha256 and step of both (a checkpoint is loaded only if it matches)
    .train.lock            held while a process trains into this folder
    l0_<target>/           one per SAE: cfg.json (metadata: train_corpus, l0_target,
                           replicate, init_seed, ...) + sae.safetensors (folded),
                           metrics.jsonl, config.json
        snapshots/tokens_<budget>/   the same, saved mid-run (``train.snapshot_tokens``)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from tqdm.auto import tqdm

from sae_med import distributed as dist
from sae_med.artifacts import (
    artifact_lock,
    atomic_path,
    derived_seed,
    file_sha256,
    stable_hash,
    write_json_atomic,
)
from sae_med.batches import BatchSource, ResumableSource, prefetch
from sae_med.config import Config, TrainConfig
from sae_med.models import pick_device
from sae_med.runtime import auto_dtype, warn_if_bf16_slow
from sae_med.sae import CFG_FILENAME, JumpReLUSAE, pre_acts

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
CHECKPOINT_RECORD_NAME = "checkpoint.json"
RUN_LOCK_NAME = ".train.lock"
METRICS_NAME = "metrics.jsonl"
SNAPSHOTS_DIR = "snapshots"
CHECKPOINT_FORMAT = 3
"""3: Adam's W_enc state is kept in (d_sae, d_model) layout (:class:`SweepMember`)."""
SPARSE_MAX_DENSITY = 0.05
"""With ``kernel: auto`` the CSR path is used only while the previous step's L0 was at most
this fraction of the width; denser latents (e.g. right after init, when about half fire) are
faster through plain matmuls."""


class TrainingError(RuntimeError):
    """Training stopped on bad input (wrong width, NaN/inf) or an unusable checkpoint."""


@dataclass(frozen=True)
class TrainMetrics:
    """One row of an SAE's ``metrics.jsonl``: the global training batch at a logged step."""

    step: int
    """Steps done (1-based)."""
    tokens: int
    lr: float
    sparsity_coeff: float
    loss: float
    mse: float
    """Mean over rows of sum_dims (x - x_hat)^2, in the scaled training space."""
    sparsity_loss: float
    l0: float
    fve: float
    dead_frac: float
    """Share of latents that have not fired within ``train.dead_window_tokens``."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, line: str) -> TrainMetrics:
        """A row as written by :meth:`to_json`; a field a row lacks is NaN (logs of older
        versions), a key this type does not know is ignored."""
        row = json.loads(line)
        return cls(**{f.name: row.get(f.name, math.nan) for f in dataclasses.fields(cls)})


def last_metrics(path: Path) -> TrainMetrics | None:
    """The last row of the ``metrics.jsonl`` at ``path`` (None: missing or empty)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return TrainMetrics.from_json(lines[-1]) if lines else None


@dataclass(frozen=True)
class TrainResult:
    """One trained SAE of a sweep."""

    l0_target: float
    path: Path
    """Directory with the folded ``cfg.json`` + ``sae.safetensors``, ``metrics.jsonl`` and
    the run's ``config.json``."""
    steps: int
    tokens: int
    input_scale: float
    """Scale the SAE was trained with (already folded into the saved weights)."""
    metrics: TrainMetrics | None = None
    """Last logged metrics row (None: its log is missing or empty)."""
    train_corpus: str = ""
    replicate: int = 0
    """Index of the seed replicate (0 .. ``sae.seeds`` - 1)."""

    @property
    def final(self) -> dict[str, float]:
        """:attr:`metrics` as a dict ({} when there is none), e.g. for a table row."""
        return dataclasses.asdict(self.metrics) if self.metrics is not None else {}


# --------------------------------------------------------------------------------------
# Schedules, metrics, helpers
# --------------------------------------------------------------------------------------

def total_steps(tc: TrainConfig) -> int:
    return math.ceil(tc.n_tokens / tc.batch_size)


def lr_at(step: int, tc: TrainConfig, n_steps: int) -> float:
    """Linear warmup over ``lr_warmup_steps``, then constant, then a linear decay to 0 over
    the last ``lr_decay_frac`` of the steps (``step`` counts from 0)."""
    warm = min(1.0, (step + 1) / tc.lr_warmup_steps) if tc.lr_warmup_steps else 1.0
    decay_steps = int(round(n_steps * tc.lr_decay_frac))
    decay_start = n_steps - decay_steps
    decay = (n_steps - step) / decay_steps if decay_steps and step >= decay_start else 1.0
    return tc.lr * warm * decay


def sparsity_coeff_at(step: int, tc: TrainConfig) -> float:
    """``sparsity_coeff`` warmed up linearly over ``sparsity_warmup_steps``."""
    if not tc.sparsity_warmup_steps:
        return tc.sparsity_coeff
    return tc.sparsity_coeff * min(1.0, (step + 1) / tc.sparsity_warmup_steps)


def init_seed(seed: int, train_corpus: str, l0_target: float, replicate: int) -> int:
    """Initialisation seed of one SAE: distinct for every (training corpus, target L0,
    replicate), so the families compared never start from the same decoder."""
    return derived_seed(seed, "init", train_corpus, float(l0_target), int(replicate))


def batch_seed(seed: int, replicate: int) -> int:
    """Batch-order seed of a replicate's sweep (replicate 0 reads in ``seed``'s order)."""
    return seed if replicate == 0 else derived_seed(seed, "batches", int(replicate))


def sae_dirname(l0_target: float) -> str:
    return f"l0_{l0_target:g}"


def replicate_dirname(replicate: int) -> str:
    return f"seed_{replicate}"


def snapshot_dir(sae_dir: Path, budget: int) -> Path:
    """Where the SAE saved in ``sae_dir`` keeps its snapshot at ``budget`` training tokens
    (``train.snapshot_tokens``)."""
    return sae_dir / SNAPSHOTS_DIR / f"tokens_{budget}"


def snapshot_steps(tc: TrainConfig) -> dict[int, list[int]]:
    """``{steps done: budgets}``: each snapshot is taken after the first step whose tokens
    reach its budget (budgets within one batch of each other share that step)."""
    out: dict[int, list[int]] = {}
    for b in tc.snapshot_tokens:
        out.setdefault(math.ceil(b / tc.batch_size), []).append(b)
    return out


def sae_id(train_corpus: str, replicate: int, l0_target: float) -> str:
    """An experiment SAE's id and its path under ``saes/``: ``medical/seed_0/l0_20``."""
    return f"{train_corpus}/{replicate_dirname(replicate)}/{sae_dirname(l0_target)}"


@torch.no_grad()
def init_threshold_at_target_(sae: JumpReLUSAE, x: Float[Tensor, "batch d_model"],
                              target: float, floor: float) -> None:
    """Set every latent's threshold to the (1 - target/width) quantile of its
    pre-activation on ``x`` (scaled inputs), so L0 starts near ``target``.

    Not the paper's recipe (theta = 0.001 everywhere); it exists because Adam moves
    log(theta) by ~lr per step, so runs of a few hundred steps never get from 0.001 to the
    scale of the pre-activations. ``floor`` keeps every threshold at least the paper's."""
    z = pre_acts(x.to(sae.W_enc.device), sae.W_enc, sae.b_enc)
    q = torch.quantile(z.float(), 1.0 - target / sae.d_sae, dim=0)
    sae.log_threshold.copy_(q.clamp_min(floor).log())


class InputNorm(NamedTuple):
    """The training-time input transform x -> (x - mean) * scale, folded into saved SAEs."""

    mean: Float[Tensor, " d_model"]
    """E[x] with ``train.center_inputs``, else zeros."""
    scale: float
    """s with E||(x - mean) s||^2 = 1."""

    def apply(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device, x.dtype)) * self.scale

    def to_raw(self, sae: JumpReLUSAE) -> JumpReLUSAE:
        """A copy of a training-space SAE that takes raw activations."""
        return sae.folded().fold_input_mean_(self.mean)

    def from_raw(self, sae: JumpReLUSAE) -> JumpReLUSAE:
        """A copy of a raw-activation SAE in this training space."""
        return sae.folded().fold_input_mean_(-self.mean).fold_input_scale_(1.0 / self.scale)


@torch.no_grad()
def estimate_input_norm(source: BatchSource, batch_size: int, n_batches: int, seed: int,
                        center: bool = False) -> InputNorm:
    """Mean (if ``center``) and scale s with E||(x - mean) s||^2 = 1 over ``n_batches``."""
    total_sq, total, count = 0.0, torch.zeros(source.d_model, dtype=torch.float64), 0
    it = source.iter_batches(batch_size, seed)
    for i in range(n_batches):
        x = next(it).double().cpu()
        sq = x.pow(2).sum(-1)
        if not torch.isfinite(sq).all():
            raise TrainingError(f"NaN/inf in normalisation batch {i} "
                                f"({source.describe_batch(i, batch_size, seed)})")
        total_sq += float(sq.sum())
        total += x.sum(0)
        count += x.shape[0]
    if isinstance(source, ResumableSource):  # each rank read its own documents
        sums = dist.all_reduce_sum_(torch.cat([
            torch.tensor([total_sq, float(count)], dtype=torch.float64), total]))
        total_sq, count, total = float(sums[0]), int(sums[1]), sums[2:]
    mean = total / count if center else torch.zeros_like(total)
    # E||x - m||^2 = E||x||^2 - 2 m.E[x] + ||m||^2 (float64: the mean may dominate ||x||)
    mean_sq = total_sq / count - 2 * float(mean @ (total / count)) + float(mean @ mean)
    if mean_sq <= 0:
        raise TrainingError("activations are all zero (or constant): cannot normalise")
    return InputNorm(mean.float(), 1.0 / math.sqrt(mean_sq))


INIT_SCHEME = "corpus-target-replicate"
"""Names the init/batch seed derivation in the run key, so checkpoints of runs seeded by
an older scheme (shared init across corpora) are never resumed."""


def run_key(cfg: Config, source: BatchSource, train_corpus: str = "", replicate: int = 0
            ) -> str:
    """Hash of everything that determines the trained weights (not logging/checkpointing)."""
    # the source's key names where the activations come from (a cache or a stream)
    train = {k: v for k, v in cfg.to_dict()["train"].items()
             if k not in ("log_every", "checkpoint_every", "device", "kernel", "compile",
                          "source", "stream_buffer_tokens", "workers")}
    # the number of replicates does not change any one replicate's weights
    sae = {k: v for k, v in cfg.to_dict()["sae"].items() if k != "seeds"}
    # a cache's key names the activations it holds; in-memory sources have none
    return stable_hash({"seed": cfg.seed, "sae": sae, "train": train,
                        "d_model": source.d_model, "source": getattr(source, "key", None),
                        "init": INIT_SCHEME, "train_corpus": train_corpus,
                        "replicate": replicate})


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------

FUSED_ADAM_DEVICES = ("cpu", "cuda")


class SweepMember:
    """One SAE of the sweep with its optimiser, dead-latent clock and metrics file."""

    def __init__(self, sae: JumpReLUSAE, target: float, tc: TrainConfig, path: Path):
        self.sae, self.target, self.path = sae, target, path
        # Adam updates W_enc through a contiguous (d_sae, d_model) alias of its storage:
        # the fused kernel copies a transposed tensor (and its state) in and out on every
        # step, more than the layout saves (see JumpReLUSAE.W_enc and :meth:`step`).
        self.enc_alias = nn.Parameter(sae.W_enc.data.t()) if sae.W_enc.t().is_contiguous() \
            else sae.W_enc
        others = [self.enc_alias if n == "W_enc" else p for n, p in sae.named_parameters()
                  if n != "log_threshold"]
        self.opt = torch.optim.Adam(
            [{"params": others, "lr_mult": 1.0},
             {"params": [sae.log_threshold], "lr_mult": tc.threshold_lr_mult}],
            lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
            # one fused kernel instead of a dozen passes per tensor: 6x faster on CPU (a
            # third of the sparse step's time); the same update to rounding
            fused=sae.W_enc.device.type in FUSED_ADAM_DEVICES)
        # Tokens seen when each latent last fired (0: never).
        self.last_fired = torch.zeros(sae.d_sae, dtype=torch.int64,
                                      device=sae.W_enc.device)
        self.last: TrainMetrics | None = None  # the latest logged row
        self.prev_l0 = math.inf  # L0 of the previous step, for the kernel choice
        self.compiled: Any = None  # torch.compile'd dense_terms for this SAE, if enabled

    def zero_grad(self) -> None:
        """Drop the SAE's gradients (``opt.zero_grad`` would miss W_enc's: Adam holds the
        alias) and the alias's view of the last one."""
        self.sae.zero_grad(set_to_none=True)
        self.enc_alias.grad = None

    def step(self) -> None:
        """One Adam step on the SAE's current gradients."""
        if self.enc_alias is not self.sae.W_enc:
            g = self.sae.W_enc.grad
            self.enc_alias.grad = None if g is None else g.t()
        self.opt.step()

    def state(self) -> dict[str, Any]:
        return {"target": self.target, "sae": self.sae.state_dict(),
                "opt": self.opt.state_dict(), "last_fired": self.last_fired,
                "prev_l0": self.prev_l0}

    def dead(self, tokens: int, window: int) -> Bool[Tensor, " d_sae"]:
        """Latents that have not fired in the last ``window`` of the ``tokens`` trained on
        so far (early in a run, in all of them)."""
        return (tokens - self.last_fired) >= min(window, tokens)

    def load_state(self, st: dict[str, Any]) -> None:
        self.sae.load_state_dict(st["sae"])
        self.opt.load_state_dict(st["opt"])
        self.last_fired.copy_(st["last_fired"])
        self.prev_l0 = float(st["prev_l0"])


class StepTerms(NamedTuple):
    """Forward results of one SAE on this rank's rows, before any cross-rank reduction."""

    x_hat: Float[Tensor, "rows d_model"]
    sq_err: Tensor
    """Scalar: mean over rows of sum_dims (x - x_hat)^2."""
    l0: Tensor
    """Scalar: mean over rows of the number of active latents (STE gradient)."""
    fired: Bool[Tensor, " d_sae"]
    """Latents that fired on any row."""


def dense_terms(sae: JumpReLUSAE, x: Float[Tensor, "rows d_model"]) -> StepTerms:
    """The dense forward of one step (the part ``train.compile`` hands to torch.compile)."""
    out = sae(x)
    x_hat = out.x_hat.float()
    return StepTerms(x_hat, (x_hat - x).pow(2).sum(-1).mean(), out.l0.float(),
                     (out.acts > 0).any(0))


def pre_act_term(sae: JumpReLUSAE, x: Float[Tensor, "rows d_model"],
                 dead: Bool[Tensor, " d_sae"]) -> Tensor:
    """Scalar: mean over rows of sum over the ``dead`` latents of relu(theta - z), the
    pre-activation loss before its coefficient. Anthropic weights each latent by its
    decoder norm; decoder rows are kept at unit norm here, so the weight is 1."""
    idx = dead.nonzero().squeeze(1)
    z = x.float() @ sae.W_enc[:, idx].float() + sae.b_enc[idx].float()
    return (sae.threshold[idx] - z).relu().sum(-1).mean()


def sparse_terms(sae: JumpReLUSAE, x: Float[Tensor, "rows d_model"]) -> StepTerms:
    """The CSR fast path's forward of one step (fp32, CPU)."""
    out = sae(x, fast=True)
    x_hat = out.x_hat.float()
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
    fired[out.acts.col_indices()] = True
    return StepTerms(x_hat, (x_hat - x).pow(2).sum(-1).mean(), out.l0.float(), fired)


_COMPILE_OK: bool | None = None


def compile_available() -> bool:
    """Whether torch.compile (inductor) can build and run a forward+backward here; probed
    once per process on a tiny function, because a missing C++ compiler or Triton only
    shows up at the first call."""
    global _COMPILE_OK
    if _COMPILE_OK is None:
        try:
            w = torch.ones(3, requires_grad=True)
            torch.compile(lambda a: (a * w).relu().sum())(torch.ones(3)).backward()
            _COMPILE_OK = w.grad is not None
        except Exception as e:  # noqa: BLE001 - any compiler failure means "run eager"
            log.warning("torch.compile is unusable here (%s: %s); train.compile falls back to "
                        "the eager step", type(e).__name__, str(e).splitlines()[0][:200])
            _COMPILE_OK = False
    return _COMPILE_OK


def clip_grad_norm_(sae: JumpReLUSAE, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_``, but the gradients are rescaled only when their
    norm exceeds ``max_norm``: torch multiplies by a coefficient clamped to 1 on every
    step (to avoid a host sync), two full passes over each weight gradient for nothing
    on a CPU step where the norm is mostly below the bar. The same gradients to the bit."""
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(sae.parameters(), max_norm, norm)


class StepResult(NamedTuple):
    """One SAE's optimiser step (:func:`train_step`), detached; every value but ``x_hat``
    is that of the global batch."""

    loss: Tensor
    """Scalar: ``mse + sparsity_loss``."""
    mse: Tensor
    """Scalar: mean over rows of sum_dims (x - x_hat)^2."""
    sparsity_loss: Tensor
    """Scalar: the sparsity term, coefficient included."""
    l0: Tensor
    """Scalar: mean number of active latents per row."""
    x_hat: Float[Tensor, "rows d_model"]
    """The reconstruction of this rank's rows."""
    fired: Bool[Tensor, " d_sae"]
    """Latents that fired on any row."""


def train_step(m: SweepMember, x: Float[Tensor, "rows d_model"], lr: float, coeff: float,
               tc: TrainConfig, fast: bool,
               autocast: contextlib.AbstractContextManager | None = None,
               dead: Bool[Tensor, " d_sae"] | None = None) -> StepResult:
    """One optimiser step of one SAE on the (already scaled) rows ``x`` of this rank.

    In one process ``x`` is the whole batch. Under torchrun each of W ranks holds B/W rows
    of the global batch; the reconstruction term is divided by W and the sparsity term is
    built from the global L0 (one scalar all-reduce) with this rank's share of its gradient,
    so the gradients summed over ranks are exactly those of the global-batch loss.
    ``dead`` (the same on every rank) gets ``tc.pre_act_loss`` times :func:`pre_act_term`,
    which is optimised but, like an auxiliary loss, not part of the reported ``loss``.
    """
    sae, ws = m.sae, dist.world_size()
    terms_fn = m.compiled if (m.compiled is not None and not fast) else (
        (lambda x: sparse_terms(sae, x)) if fast else (lambda x: dense_terms(sae, x)))
    with autocast or contextlib.nullcontext():
        t = terms_fn(x)
    mse, l0 = t.sq_err / ws, t.l0
    if ws > 1:
        # the target-L0 penalty is nonlinear in the batch L0: evaluate it at the global L0,
        # while the gradient flows through this rank's rows only (1/W of the total)
        l0_global = dist.all_reduce_sum_(l0.detach().clone()) / ws
        l0 = l0 / ws + (l0_global - l0 / ws).detach()
    sp = (l0 / m.target - 1) ** 2 if tc.sparsity == "target_l0" else l0
    sp = coeff * sp
    loss = mse + sp
    if dead is not None and bool(dead.any()):
        loss = loss + tc.pre_act_loss * pre_act_term(sae, x, dead) / ws
    for g in m.opt.param_groups:
        g["lr"] = lr * g["lr_mult"]
    m.zero_grad()
    loss.backward()
    mse_sum, fired = mse.detach().reshape(1), t.fired
    if ws > 1:  # one flat all-reduce: gradients, the mse shares and the fired counts
        extra = torch.cat([mse_sum, fired.to(mse_sum.dtype)])
        dist.all_reduce_grads_(sae.parameters(), extra)
        mse_sum, fired = extra[:1], extra[1:] > 0
    sae.remove_parallel_grad_()
    if tc.grad_clip > 0:
        clip_grad_norm_(sae, tc.grad_clip)
    m.step()
    sae.unit_norm_decoder_()
    mse_g = mse_sum[0]
    sp_g = sp.detach()
    return StepResult(mse_g + sp_g, mse_g, sp_g, l0.detach(), t.x_hat.detach(), fired)


def _metric_step(line: str) -> int | None:
    """The step of a metrics row; None for a row cut short by a kill."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric rows logged after ``last_step`` (they are recomputed on resume) and
    any row a kill left half-written."""
    if not path.exists():
        return
    rows = [ln for ln in path.read_text(errors="replace").splitlines()
            if (step := _metric_step(ln)) is not None and step <= last_step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(r + "\n" for r in rows))


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through it."""

    def __init__(self, f: Any):
        self.f, self.sha = f, hashlib.sha256()
        self.error: OSError | None = None
        """What the file raised (torch reports a failed write as a bare RuntimeError)."""

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def _checkpoint_record(path: Path) -> dict[str, int]:
    """``{sha256: step}`` of the checkpoints written into ``path``'s folder ({} if none)."""
    rec = path.with_name(CHECKPOINT_RECORD_NAME)
    if not rec.exists():
        return {}
    try:
        return {str(k): int(v) for k, v in json.loads(rec.read_text())["sha256"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("checkpoint record %s is damaged; no checkpoint can be verified", rec)
        return {}


def _rank_batches(source: BatchSource, batch_size: int, seed: int, start: int
                  ) -> Iterator[Float[Tensor, "rows d_model"]]:
    """This rank's rows of global batches ``start``, ``start + 1``, ...: a resumable source
    (a stream) makes them from this rank's own documents; any other is read whole by every
    rank and sliced."""
    if isinstance(source, ResumableSource):
        return source.iter_batches(batch_size // dist.world_size(), seed, start_batch=start)
    return (dist.local_rows(x) for x in source.iter_batches(batch_size, seed,
                                                            start_batch=start))


def _source_positions(source: BatchSource, next_step: int, batch_size: int
                      ) -> list[dict[str, int]] | None:
    """Every rank's position in a resumable source at ``next_step`` (a collective: all
    ranks call it), for the checkpoint; None for sources that seek by batch index."""
    if not isinstance(source, ResumableSource):
        return None
    return dist.all_gather_objects(
        source.state_dict(next_step, batch_size // dist.world_size()))


def _save_checkpoint(path: Path, key: str, step: int, norm: InputNorm,
                     members: list[SweepMember],
                     source_positions: list[dict[str, int]] | None = None) -> None:
    """Write, read back and verify the new checkpoint before it replaces the current one,
    which is kept as ``checkpoint.prev.pt``. At every instant ``checkpoint.pt`` is complete
    and its sha256 is in ``checkpoint.json``, so a kill never costs more than the steps
    since the last checkpoint."""
    state = {"format": CHECKPOINT_FORMAT, "run_key": key, "step": step,
             "scale": norm.scale, "mean": norm.mean.cpu(),
             "members": [m.state() for m in members], "source": source_positions,
             "rng": {"torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                     else []}}
    record = _checkpoint_record(path)
    prev = path.with_name(PREVIOUS_CHECKPOINT_NAME)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            w = _HashingWriter(f)
            try:
                torch.save(state, w)
            except RuntimeError:
                if w.error is not None:  # e.g. no space left: say so, not torch's enforce
                    raise w.error from None
                raise
        sha = w.sha.hexdigest()
        if file_sha256(tmp) != sha:
            raise TrainingError(f"checkpoint {tmp} reads back differently from what was "
                                f"written (failing disk?); {path} is kept")
        kept = {}
        if path.exists() and (old := file_sha256(path)) in record:
            with atomic_path(prev) as ptmp:  # the current one becomes the previous one
                ptmp.unlink()
                try:
                    os.link(path, ptmp)
                except OSError:  # a file system without hard links
                    shutil.copyfile(path, ptmp)
            kept = {old: record[old]}
        write_json_atomic(path.with_name(CHECKPOINT_RECORD_NAME),
                          {"sha256": {sha: step, **kept}})


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``, refused unless its sha256 is one recorded when it was
    written (a mismatch names the previous good checkpoint, if there is one)."""
    record = _checkpoint_record(path)
    if not record:
        log.warning("checkpoint %s has no checksum record (written before checksums); "
                    "loading it unverified", path)
    elif file_sha256(path) not in record:
        prev = path.with_name(PREVIOUS_CHECKPOINT_NAME)
        good = (f"the previous good checkpoint {prev} (step {record[file_sha256(prev)]}) is "
                f"intact: move it onto {path} to resume from there, or delete {path} to "
                f"start over") if prev.exists() and file_sha256(prev) in record else (
                f"no previous good checkpoint is left: delete {path} to start over")
        raise TrainingError(f"checkpoint {path} fails its sha256 check (damaged on disk); "
                            f"{good}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same failure
        raise TrainingError(f"checkpoint {path} is unreadable "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                            f"delete it to start over") from e
    if not isinstance(state, dict):
        raise TrainingError(f"checkpoint {path} holds no training state; delete it to start "
                            f"over")
    return state


def _starting_state(out_dir: Path, key: str, device: torch.device, resume: bool,
                    retrain_other_run: bool) -> dict[str, Any] | None:
    """The checkpoint in ``out_dir`` to continue from, or None to start from scratch.

    A checkpoint of another run (config, seed, cache or d_model changed) is refused, or
    with ``retrain_other_run`` trained over (with a warning), never resumed."""
    path = out_dir / CHECKPOINT_NAME
    if not path.exists():
        if resume:
            log.info("no checkpoint in %s: starting from scratch", out_dir)
        return None
    if not resume:
        if dist.is_main():
            log.warning("overwriting the existing run in %s (pass resume=True to continue "
                        "it)", out_dir)
        return None
    state = read_checkpoint(path, device)
    if retrain_other_run and state.get("run_key") != key:
        log.warning("%s was trained with another config or cache; retraining", out_dir)
        return None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"checkpoint {path} has format {state.get('format')}, this "
                            f"version reads {CHECKPOINT_FORMAT}; delete it to start over")
    if state.get("run_key") != key:
        raise TrainingError(f"checkpoint {path} belongs to a different run (config, seed or "
                            f"d_model changed); delete it or use a new output directory")
    log.info("resuming %s from step %d", out_dir, state["step"])
    return state


def _holding_run_lock(fn: Any) -> Any:
    """Run ``fn(cfg, source, out_dir, ...)`` holding ``out_dir``'s lock (the main rank):
    a second process training into the same folder is refused at once."""
    @functools.wraps(fn)
    def wrapper(cfg: Config, source: BatchSource, out_dir: str | Path, *args: Any,
                **kwargs: Any) -> Any:
        if not dist.is_main():
            return fn(cfg, source, out_dir, *args, **kwargs)
        with artifact_lock(Path(out_dir) / RUN_LOCK_NAME, f"the training run in {out_dir}",
                           wait=False):
            return fn(cfg, source, out_dir, *args, **kwargs)
    return wrapper


def _kept(ckpt_path: Path, step: int | None) -> str:
    return (f"the last good checkpoint (step {step}) is kept at {ckpt_path}" if step is not None
            else "no checkpoint was written yet")


class StepPolicy(NamedTuple):
    """Where and how the steps run, from ``train.device``, ``autocast_bf16``, ``compile``
    and ``kernel`` and what this machine offers."""

    device: torch.device
    bf16: bool
    """bf16 autocast: asked for, and on CUDA devices with native bf16."""
    compile: bool
    """The dense step goes through torch.compile: asked for and usable here."""
    sparse_ok: bool
    """The CSR kernel may run: always with ``kernel: sparse``; with ``auto`` on a CPU
    without autocast or compile, once latents are sparse enough (:func:`use_sparse`)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
                else contextlib.nullcontext())


def step_policy(tc: TrainConfig) -> StepPolicy:
    device = pick_device(tc.device)
    # bf16 autocast by default only where it is fast (a CUDA GPU with native bf16); asked
    # for on a machine where it is slow, it runs and warns once
    if tc.autocast_bf16:
        warn_if_bf16_slow(device, "train.autocast_bf16")
    bf16 = tc.autocast_bf16 or (device.type == "cuda"
                                and auto_dtype(device).dtype == "bfloat16")
    return StepPolicy(device, bf16, tc.compile and compile_available(),
                      tc.kernel == "sparse" or (tc.kernel == "auto" and device.type == "cpu"
                                                and not bf16 and not tc.compile))


def use_sparse(policy: StepPolicy, m: SweepMember, tc: TrainConfig) -> bool:
    """Whether ``m``'s next step takes the CSR kernel (``auto``: while the previous step's
    L0 was at most :data:`SPARSE_MAX_DENSITY` of the width)."""
    return policy.sparse_ok and (tc.kernel == "sparse"
                                 or m.prev_l0 <= SPARSE_MAX_DENSITY * m.sae.d_sae)


def _check_inputs(cfg: Config, source: BatchSource, d_model: int | None,
                  init_saes: Sequence[JumpReLUSAE] | None) -> None:
    """Refuse a source, ``d_model``, ``init_saes`` or world size that does not fit ``cfg``."""
    sc = cfg.sae
    if sc.architecture != "jumprelu":  # built and checked (sae_factory), not trained yet
        raise TrainingError(f"sae.architecture={sc.architecture!r}: this trainer trains "
                            f"JumpReLU SAEs only so far")
    expected = {"d_model argument": d_model} if d_model is not None else {}
    for i, s in enumerate(init_saes or []):
        expected[f"init_saes[{i}]"] = s.d_model
        if s.d_sae != sc.width:
            raise TrainingError(f"init_saes[{i}] has width {s.d_sae}, config sae.width is "
                                f"{sc.width}")
    for what, dm in expected.items():
        if dm != source.d_model:
            raise TrainingError(f"activation source has d_model={source.d_model} but the "
                                f"{what} expects d_model={dm}")
    if init_saes is not None and len(init_saes) != len(sc.l0_targets):
        raise TrainingError(f"{len(init_saes)} init_saes for {len(sc.l0_targets)} targets")
    bs, ws = cfg.train.batch_size, dist.world_size()
    if bs % ws:
        raise TrainingError(f"train.batch_size={bs} does not split over {ws} ranks; use a "
                            f"multiple of the world size")


@dataclass
class _Sweep:
    """A sweep being trained: what its steps need besides the batch."""

    cfg: Config
    source: BatchSource
    out_dir: Path
    key: str
    """:func:`run_key` of the sweep (checkpoints and saved SAEs carry it)."""
    train_corpus: str
    replicate: int
    norm: InputNorm
    policy: StepPolicy
    members: list[SweepMember]
    paper_init: bool = True
    """Whether the SAEs started from the paper's init (their metadata names its seed)."""
    saved_step: int | None = None
    """Step of the last checkpoint known to be on disk (None: none yet)."""

    @property
    def order_seed(self) -> int:
        return batch_seed(self.cfg.seed, self.replicate)

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME


def _new_members(cfg: Config, source: BatchSource, out_dir: Path, norm: InputNorm,
                 policy: StepPolicy, state: dict[str, Any] | None,
                 init_saes: Sequence[JumpReLUSAE] | None, train_corpus: str,
                 replicate: int) -> list[SweepMember]:
    """One :class:`SweepMember` per target, on the device: ``init_saes`` moved into the
    training space, or the paper's init from :func:`init_seed` (thresholds at the target's
    quantile with ``sae.threshold_init: target_quantile`` when not resuming)."""
    sc, bs = cfg.sae, cfg.train.batch_size
    members = []
    for i, target in enumerate(sc.l0_targets):
        if init_saes is not None:
            sae = norm.from_raw(init_saes[i])
        else:
            gen = torch.Generator().manual_seed(
                init_seed(cfg.seed, train_corpus, target, replicate))
            sae = JumpReLUSAE(source.d_model, sc.width, bandwidth=sc.bandwidth,
                              init_threshold=sc.init_threshold, generator=gen)
            sae.input_scale.fill_(norm.scale)
            if sc.threshold_init == "target_quantile" and state is None:
                order_seed = batch_seed(cfg.seed, replicate)
                init_threshold_at_target_(sae, norm.apply(next(source.iter_batches(
                    bs, derived_seed(order_seed, "threshold")))), target, sc.init_threshold)
        sae_dir = out_dir / sae_dirname(target)
        sae_dir.mkdir(parents=True, exist_ok=True)
        sae = sae.to(policy.device)
        dist.broadcast_module_(sae)  # identical already (same seeds, same batches); made sure
        members.append(SweepMember(sae, target, cfg.train, sae_dir / METRICS_NAME))
    return members


def _restore(sw: _Sweep, state: dict[str, Any] | None) -> int:
    """Load checkpoint ``state`` into the sweep (None: a fresh start, whose metrics logs are
    emptied); returns the step to start from. Resuming drops logged rows past it."""
    main = dist.is_main()
    if state is None:
        for m in sw.members if main else []:
            m.path.write_text("")
        return 0
    start = sw.saved_step = int(state["step"])
    for m, st in zip(sw.members, state["members"], strict=True):
        m.load_state(st)
    if isinstance(sw.source, ResumableSource) and state.get("source"):
        sw.source.load_state_dict(state["source"][dist.rank()])
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    for m in sw.members if main else []:
        _truncate_metrics(m.path, start)
    return start


def _scaled_batch(sw: _Sweep, x: Tensor, step: int) -> Float[Tensor, "rows d_model"]:
    """This rank's rows of batch ``step``, checked (shape, finite values), on the device
    and in the training space."""
    bs, d = sw.cfg.train.batch_size, sw.source.d_model
    if x.shape != (bs // dist.world_size(), d):
        raise TrainingError(f"step {step}: batch has shape {tuple(x.shape)}, expected "
                            f"{(bs // dist.world_size(), d)}")
    if not torch.isfinite(x).all():
        raise TrainingError(
            f"step {step}: NaN/inf in activation batch {step} "
            f"({sw.source.describe_batch(step, bs, sw.order_seed)}); training stopped, "
            f"{_kept(sw.ckpt_path, sw.saved_step)}")
    return sw.norm.apply(x.to(sw.policy.device, non_blocking=True))


def _step_members(sw: _Sweep, x: Float[Tensor, "rows d_model"], step: int,
                  metric_files: Sequence[Any], autocast: contextlib.AbstractContextManager
                  ) -> bool:
    """One optimiser step of every SAE on the scaled rows ``x``; on a logged step each
    SAE's :class:`TrainMetrics` row goes to its file (the main rank's). Returns whether
    the step was logged."""
    tc = sw.cfg.train
    n_steps, tokens = total_steps(tc), (step + 1) * tc.batch_size
    lr, coeff = lr_at(step, tc, n_steps), sparsity_coeff_at(step, tc)
    is_log = (step + 1) % tc.log_every == 0 or step + 1 == n_steps
    before = step * tc.batch_size
    for m, f in zip(sw.members, metric_files, strict=True):
        # the pre-activation loss starts once a whole window has passed (sae-lens's rule)
        dead = m.dead(before, tc.dead_window_tokens) if (
            tc.pre_act_loss > 0 and before >= tc.dead_window_tokens) else None
        r = train_step(m, x, lr, coeff, tc, use_sparse(sw.policy, m, tc), autocast, dead)
        if not torch.isfinite(r.loss):
            where = sw.source.describe_batch(step, tc.batch_size, sw.order_seed)
            raise TrainingError(
                f"step {step}: loss became {float(r.loss)} for target L0 {m.target} "
                f"on batch {step} ({where}); {_kept(sw.ckpt_path, sw.saved_step)}")
        m.last_fired.masked_fill_(r.fired, tokens)  # no host sync on GPU
        if sw.policy.sparse_ok:
            m.prev_l0 = float(r.l0)
        if is_log:
            dead = m.dead(tokens, tc.dead_window_tokens)
            m.last = TrainMetrics(step + 1, tokens, lr, coeff, float(r.loss), float(r.mse),
                                  float(r.sparsity_loss), float(r.l0),
                                  dist.global_fve(x, r.x_hat), float(dead.float().mean()))
            if f is not None:
                f.write(m.last.to_json() + "\n")
                f.flush()
    return is_log


def _checkpoint(sw: _Sweep, step: int) -> None:
    """Checkpoint the sweep after ``step`` steps (every rank calls it; the main one writes)."""
    positions = _source_positions(sw.source, step, sw.cfg.train.batch_size)
    if dist.is_main():
        _save_checkpoint(sw.ckpt_path, sw.key, step, sw.norm, sw.members, positions)
        sw.saved_step = step


def _run_steps(sw: _Sweep, start: int, progress: bool, bar_position: int = 0) -> None:
    """Steps ``start`` .. the last, each SAE on every batch, checkpointing on the way."""
    tc, main = sw.cfg.train, dist.is_main()
    n_steps = total_steps(tc)
    autocast = sw.policy.autocast()
    batches = _rank_batches(sw.source, tc.batch_size, sw.order_seed, start)
    if sw.policy.device.type == "cuda":  # read, decode and pin the next batches meanwhile
        batches = prefetch(batches, depth=2, pin_memory=True)
    bar = tqdm(total=n_steps, initial=start, disable=not progress or not main, unit="step",
               desc=f"train {sw.train_corpus or sw.out_dir.name} seed {sw.replicate}",
               position=bar_position)
    metric_files = [open(m.path, "a") if main else None for m in sw.members]  # noqa: SIM115
    snapshots = snapshot_steps(tc)
    try:
        for step in range(start, n_steps):
            x = _scaled_batch(sw, next(batches), step)
            if _step_members(sw, x, step, metric_files, autocast):
                bar.set_postfix_str(" | ".join(
                    f"L0 {m.last.l0:.0f}/{m.target:g} loss {m.last.loss:.3g} "
                    f"FVE {m.last.fve:.3f} dead {m.last.dead_frac:.2f}"
                    for m in sw.members if m.last is not None))
            bar.update(1)
            for budget in snapshots.get(step + 1, []) if main else []:
                _save_saes(sw, step + 1, budget)
            if tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0:
                _checkpoint(sw, step + 1)
    finally:
        bar.close()
        for f in metric_files:
            if f is not None:
                f.close()


def _save_saes(sw: _Sweep, steps: int, budget: int | None = None) -> None:
    """Write every SAE after ``steps`` steps, folded into raw-activation space, with its
    metadata and the config: the final SAEs, or with ``budget`` their snapshots."""
    bs = sw.cfg.train.batch_size
    for m in sw.members:
        out = m.path.parent if budget is None else snapshot_dir(m.path.parent, budget)
        out.mkdir(parents=True, exist_ok=True)
        sw.norm.to_raw(m.sae).save(out, metadata={
            "train_corpus": sw.train_corpus, "l0_target": m.target,
            "replicate": sw.replicate,
            "init_seed": (init_seed(sw.cfg.seed, sw.train_corpus, m.target, sw.replicate)
                          if sw.paper_init else None),
            "batch_seed": sw.order_seed, "steps": steps, "tokens": steps * bs,
            "run_key": sw.key, "input_scale": sw.norm.scale,
            **({"snapshot_tokens": budget} if budget is not None else {})})
        write_json_atomic(out / "config.json", sw.cfg.to_dict())


def _saved_from(sae_dirs: Sequence[Path], key: str, steps: int) -> bool:
    """Whether every SAE folder holds an SAE saved by run ``key`` after ``steps`` steps."""
    for d in sae_dirs:
        path = d / CFG_FILENAME
        meta = json.loads(path.read_text()).get("metadata", {}) if path.exists() else {}
        if (meta.get("run_key"), meta.get("steps")) != (key, steps):
            return False
    return True


def _saved(sw: _Sweep, steps: int) -> bool:
    """Whether every SAE of the sweep is already saved from this run after ``steps``
    steps (reusing a finished run then rewrites nothing)."""
    return _saved_from([m.path.parent for m in sw.members], sw.key, steps)


def sweep_finished(cfg: Config, source: BatchSource, out_dir: str | Path,
                   train_corpus: str = "", replicate: int = 0) -> bool:
    """Whether :func:`train_saes` with these arguments would only reuse finished SAEs
    (every target saved by this run key after the last step)."""
    dirs = [Path(out_dir) / sae_dirname(t) for t in cfg.sae.l0_targets]
    return _saved_from(dirs, run_key(cfg, source, train_corpus, replicate),
                       total_steps(cfg.train))


@_holding_run_lock
def train_saes(cfg: Config, source: BatchSource, out_dir: str | Path, resume: bool = False,
               progress: bool = True, d_model: int | None = None,
               init_saes: Sequence[JumpReLUSAE] | None = None, train_corpus: str = "",
               replicate: int = 0, retrain_other_run: bool = False, bar_position: int = 0
               ) -> list[TrainResult]:
    """Train one JumpReLU SAE per ``cfg.sae.l0_targets`` from one pass over ``source``.

    Args:
        cfg: resolved config (``cfg.sae``, ``cfg.train``, ``cfg.seed``).
        source: activation batches; batch ``k`` of ``iter_batches(batch_size,
            batch_seed(cfg.seed, replicate))`` is step ``k``.
        out_dir: run directory (see the module docstring for its layout).
        resume: continue from ``out_dir/checkpoint.pt`` if present (same config required).
        progress: show a tqdm bar.
        d_model: expected activation width; a mismatch with ``source.d_model`` is an error.
        init_saes: optional starting SAEs (raw-activation space, e.g. loaded with
            :meth:`JumpReLUSAE.load`), one per target, instead of the paper's init.
        train_corpus: name of the corpus ``source`` holds; with ``replicate`` it seeds each
            SAE's initialisation (:func:`init_seed`) and goes into its metadata.
        replicate: seed replicate of this sweep (:func:`batch_seed`, :func:`init_seed`).
        retrain_other_run: with ``resume``, start over (with a warning) when the checkpoint
            belongs to another run instead of refusing it.
        bar_position: the terminal row of the progress bar (sweeps trained side by side).
    Returns:
        one :class:`TrainResult` per target, in ``cfg.sae.l0_targets`` order.
    """
    _check_inputs(cfg, source, d_model, init_saes)
    tc, out_dir = cfg.train, Path(out_dir)
    policy = step_policy(tc)
    key = run_key(cfg, source, train_corpus, replicate)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        write_json_atomic(out_dir / "config.json", cfg.to_dict())
    state = _starting_state(out_dir, key, policy.device, resume, retrain_other_run)
    dist.barrier()  # every rank has read the checkpoint before rank 0 may replace it

    norm = (InputNorm(state["mean"].cpu(), state["scale"]) if state is not None else
            estimate_input_norm(source, tc.batch_size, tc.norm_batches,
                                derived_seed(cfg.seed, "norm"), tc.center_inputs))
    members = _new_members(cfg, source, out_dir, norm, policy, state, init_saes,
                           train_corpus, replicate)
    sw = _Sweep(cfg, source, out_dir, key, train_corpus, replicate, norm, policy, members,
                paper_init=init_saes is None)
    start = _restore(sw, state)
    for m in members if policy.compile else []:
        m.compiled = torch.compile(functools.partial(dense_terms, m.sae))
    kernel = tc.kernel if tc.kernel != "auto" else (
        "auto (sparse when L0 is low)" if policy.sparse_ok else "dense")
    ws = dist.world_size()
    log.info("training %d SAEs (width %d, targets %s) for %d steps of %d on %s, %s kernel%s%s%s",
             len(members), cfg.sae.width, list(cfg.sae.l0_targets), total_steps(tc),
             tc.batch_size, policy.device, kernel, ", bf16 autocast" if policy.bf16 else "",
             ", compiled" if policy.compile else "",
             f", data-parallel over {ws} ranks" if ws > 1 else "")

    _run_steps(sw, start, progress, bar_position)
    n_steps = total_steps(tc)
    if start < n_steps:  # a finished run's checkpoint is already this one
        _checkpoint(sw, n_steps)
    if dist.is_main() and not _saved(sw, n_steps):
        _save_saes(sw, n_steps)
    dist.barrier()  # the other ranks return only once rank 0's files are in place
    return [TrainResult(m.target, m.path.parent, n_steps, n_steps * tc.batch_size, norm.scale,
                        m.last or last_metrics(m.path), train_corpus, replicate)
            for m in members]
