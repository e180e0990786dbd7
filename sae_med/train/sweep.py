"""Train a sweep of SAEs (one per target L0) from one pass over activation batches.

Every batch is read once and fed to every SAE of the sweep. ``sae.architecture`` picks the
SAE (:func:`sae_med.sae.factory.build_sae`). For JumpReLU (the default) the recipe is the
paper's (PAPER.md): loss = sum_dims (x - x_hat)^2 (mean over batch) + a sparsity term, either
``target_l0``: c (L0/L0_target - 1)^2 or ``l0_penalty``: lambda L0, with L0 through the
Heaviside straight-through estimator and the coefficient warmed up linearly; Adam
(beta1 = 0), linear lr warmup and a linear decay to 0 over the last ``lr_decay_frac`` of the
steps, grad-norm clipping, decoder-parallel gradient removed before and decoder rows
renormalised after each step, and one input scale (E||x scale||^2 = 1) estimated on a
separate stream and folded into the saved weights (with ``train.center_inputs`` the SAE
trains on the centred x - E[x], and the mean is folded into its biases too).

The other architectures take their own loss (sae-lens's) under the same optimiser, schedules,
decoder constraint, clipping, normalisation and checkpoints: for the TopK family the target
L0 is k and AuxK gets the latents dead over ``train.dead_window_tokens`` once that many
tokens have passed (sae-lens's rule); a BatchTopK SAE learns its inference threshold as it
trains. A ReLU SAE reaches its target through its L1 coefficient, which no config field
sets: it starts small (:data:`sae_med.train.step.L1_COEFF_START`) and an integral
controller on its log moves it toward the target L0 after every step
(:data:`~sae_med.train.step.L1_CONTROLLER_GAIN`), so ``train.sparsity_coeff`` and its
warm-up do not apply; the coefficient it ended at is saved in the SAE's metadata
(``l1_coeff``) and logged as ``sparsity_coeff``. These architectures
train in one process (not under ``torchrun``) with the dense kernel.

Under ``torchrun`` the sweep trains data-parallel (see :mod:`sae_med.runtime`): every
rank reads the same global batch and keeps its slice of the rows, gradients are summed
across ranks before each identical update, metrics are those of the global batch, and
rank 0 alone writes metrics, checkpoints and the final SAEs. ``train.compile`` hands the
dense forward/backward of each SAE to torch.compile.

A sweep is one (training corpus, seed replicate): its SAEs share the replicate's batch
order (:func:`batch_seed`), which is what lets them train from one pass, and each has its
own initialisation (:func:`init_seed`), so replicate variance covers both. The sweeps of
several runs that read the same batches (the same seed and ``train`` section, e.g. one
run per architecture or width) can share that pass too (:func:`train_sweeps`), each in
its own folder.

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
import functools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from sae_med import runtime
from sae_med.artifacts import (
    artifact_lock,
    derived_seed,
    stable_hash,
    write_json_atomic,
)
from sae_med.cache.batches import BatchSource, ResumableSource, prefetch
from sae_med.config import Config
from sae_med.layout import (
    CFG_FILENAME,
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    RUN_LOCK_NAME,
    sae_dirname,
    snapshot_dir,
)
from sae_med.sae.base import LinearSAE
from sae_med.sae.factory import build_sae
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.sae.kernels import pre_acts
from sae_med.train.checkpoint import save_checkpoint, starting_state
from sae_med.train.norm import InputNorm, estimate_input_norm
from sae_med.train.records import (
    TrainingError,
    TrainMetrics,
    TrainResult,
    last_metrics,
    truncate_metrics,
)
from sae_med.train.schedule import (
    batch_seed,
    init_seed,
    lr_at,
    snapshot_steps,
    sparsity_coeff_at,
    total_steps,
)
from sae_med.train.step import (
    StepPolicy,
    SweepMember,
    dense_terms,
    global_fve,
    step_policy,
    train_step,
    use_sparse,
)

log = logging.getLogger(__name__)


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




def _rank_batches(source: BatchSource, batch_size: int, seed: int, start: int
                  ) -> Iterator[Float[Tensor, "rows d_model"]]:
    """This rank's rows of global batches ``start``, ``start + 1``, ...: a resumable source
    (a stream) makes them from this rank's own documents; any other is read whole by every
    rank and sliced."""
    if isinstance(source, ResumableSource):
        return source.iter_batches(batch_size // runtime.world_size(), seed, start_batch=start)
    return (runtime.local_rows(x) for x in source.iter_batches(batch_size, seed,
                                                            start_batch=start))


def _source_positions(source: BatchSource, next_step: int, batch_size: int
                      ) -> list[dict[str, int]] | None:
    """Every rank's position in a resumable source at ``next_step`` (a collective: all
    ranks call it), for the checkpoint; None for sources that seek by batch index."""
    if not isinstance(source, ResumableSource):
        return None
    return runtime.all_gather_objects(
        source.state_dict(next_step, batch_size // runtime.world_size()))


@contextlib.contextmanager
def _run_locks(out_dirs: Sequence[Path]) -> Iterator[None]:
    """Hold every ``out_dir``'s lock (the main rank): a second process training into one
    of the folders is refused at once."""
    with contextlib.ExitStack() as stack:
        for d in out_dirs if runtime.is_main() else []:
            stack.enter_context(artifact_lock(d / RUN_LOCK_NAME, f"the training run in {d}",
                                              wait=False))
        yield


def _kept(ckpt_path: Path, step: int | None) -> str:
    return (f"the last good checkpoint (step {step}) is kept at {ckpt_path}" if step is not None
            else "no checkpoint was written yet")


def _check_inputs(cfg: Config, source: BatchSource, d_model: int | None,
                  init_saes: Sequence[LinearSAE] | None) -> None:
    """Refuse a source, ``d_model``, ``init_saes`` or world size that does not fit ``cfg``."""
    sc = cfg.sae
    _check_architecture(cfg, init_saes)
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
    bs, ws = cfg.train.batch_size, runtime.world_size()
    if bs % ws:
        raise TrainingError(f"train.batch_size={bs} does not split over {ws} ranks; use a "
                            f"multiple of the world size")


def _check_architecture(cfg: Config, init_saes: Sequence[LinearSAE] | None) -> None:
    """Refuse what only the JumpReLU trainer does (the CSR kernel, data-parallel ranks)
    for another ``sae.architecture``, and ``init_saes`` of another architecture."""
    arch = cfg.sae.architecture
    for i, s in enumerate(init_saes or []):
        if s.architecture != arch:
            raise TrainingError(f"init_saes[{i}] is a {s.architecture!r} SAE, config "
                                f"sae.architecture is {arch!r}")
    if arch == "jumprelu":
        return
    if cfg.train.kernel == "sparse":
        raise TrainingError(f"train.kernel=sparse is the JumpReLU SAE's CSR kernel; "
                            f"sae.architecture={arch!r} trains with 'auto' or 'dense'")
    if runtime.world_size() > 1:
        raise TrainingError(f"sae.architecture={arch!r} trains in one process so far; "
                            f"run it without torchrun")


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
    start: int = 0
    """The step this process starts from (a resumed checkpoint's, else 0)."""
    source_state: list[dict[str, int]] | None = None
    """Every rank's position in a resumable source, from the resumed checkpoint."""

    @property
    def order_seed(self) -> int:
        return batch_seed(self.cfg.seed, self.replicate)

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME


def _new_members(cfg: Config, source: BatchSource, out_dir: Path, norm: InputNorm,
                 policy: StepPolicy, state: dict[str, Any] | None,
                 init_saes: Sequence[LinearSAE] | None, train_corpus: str,
                 replicate: int) -> list[SweepMember]:
    """One :class:`SweepMember` per target, on the device: ``init_saes`` moved into the
    training space, or the paper's init from :func:`init_seed` (a JumpReLU SAE's
    thresholds at the target's quantile with ``sae.threshold_init: target_quantile`` when
    not resuming)."""
    sc, bs = cfg.sae, cfg.train.batch_size
    members = []
    for i, target in enumerate(sc.l0_targets):
        if init_saes is not None:
            sae = norm.from_raw(init_saes[i])
        else:
            gen = torch.Generator().manual_seed(
                init_seed(cfg.seed, train_corpus, target, replicate))
            sae = build_sae(sc, source.d_model, target, generator=gen)
            sae.input_scale.fill_(norm.scale)
            if (isinstance(sae, JumpReLUSAE) and sc.threshold_init == "target_quantile"
                    and state is None):
                order_seed = batch_seed(cfg.seed, replicate)
                init_threshold_at_target_(sae, norm.apply(next(source.iter_batches(
                    bs, derived_seed(order_seed, "threshold")))), target, sc.init_threshold)
        sae_dir = out_dir / sae_dirname(target)
        sae_dir.mkdir(parents=True, exist_ok=True)
        sae = sae.to(policy.device)
        runtime.broadcast_module_(sae)  # identical already (same seeds, same batches); made sure
        members.append(SweepMember(sae, target, cfg.train, sae_dir / METRICS_NAME))
    return members


def _restore(sw: _Sweep, state: dict[str, Any] | None) -> int:
    """Load checkpoint ``state`` into the sweep (None: a fresh start, whose metrics logs are
    emptied); returns the step to start from. Resuming drops logged rows past it."""
    main = runtime.is_main()
    if state is None:
        for m in sw.members if main else []:
            m.path.write_text("")
        return 0
    start = sw.saved_step = int(state["step"])
    for m, st in zip(sw.members, state["members"], strict=True):
        m.load_state(st)
    sw.source_state = state.get("source")
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    for m in sw.members if main else []:
        truncate_metrics(m.path, start)
    return start


def _scaled_batch(sw: _Sweep, x: Tensor, step: int) -> Float[Tensor, "rows d_model"]:
    """This rank's rows of batch ``step``, checked (shape, finite values), on the device
    and in the training space."""
    bs, d = sw.cfg.train.batch_size, sw.source.d_model
    if x.shape != (bs // runtime.world_size(), d):
        raise TrainingError(f"step {step}: batch has shape {tuple(x.shape)}, expected "
                            f"{(bs // runtime.world_size(), d)}")
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
        # the pre-activation loss and AuxK start once a whole window has passed (sae-lens)
        dead = m.dead(before, tc.dead_window_tokens) if (
            m.uses_dead_mask(tc) and before >= tc.dead_window_tokens) else None
        m_coeff = m.sparsity_coeff(coeff)
        r = train_step(m, x, lr, m_coeff, tc, use_sparse(sw.policy, m, tc), autocast, dead)
        if not torch.isfinite(r.loss):
            where = sw.source.describe_batch(step, tc.batch_size, sw.order_seed)
            raise TrainingError(
                f"step {step}: loss became {float(r.loss)} for target L0 {m.target} "
                f"on batch {step} ({where}); {_kept(sw.ckpt_path, sw.saved_step)}")
        m.last_fired.masked_fill_(r.fired, tokens)  # no host sync on GPU
        if sw.policy.sparse_ok:
            m.prev_l0 = float(r.l0)
        if m.l1_coeff is not None:
            m.follow_target_(float(r.l0))
        if is_log:
            dead = m.dead(tokens, tc.dead_window_tokens)
            m.last = TrainMetrics(step + 1, tokens, lr, m_coeff, float(r.loss), float(r.mse),
                                  float(r.sparsity_loss), float(r.l0),
                                  global_fve(x, r.x_hat), float(dead.float().mean()))
            if f is not None:
                f.write(m.last.to_json() + "\n")
                f.flush()
    return is_log


def _checkpoint(sw: _Sweep, step: int) -> None:
    """Checkpoint the sweep after ``step`` steps (every rank calls it; the main one writes)."""
    positions = _source_positions(sw.source, step, sw.cfg.train.batch_size)
    if runtime.is_main():
        save_checkpoint(sw.ckpt_path, sw.key, step, sw.norm, sw.members, positions)
        sw.saved_step = step


def _run_steps(sweeps: Sequence[_Sweep], progress: bool, bar_position: int = 0) -> None:
    """Steps from the earliest sweep's start to the last, each batch read once and fed to
    every SAE of every sweep that has reached that step, checkpointing on the way."""
    first, main = sweeps[0], runtime.is_main()
    tc, start = first.cfg.train, min(sw.start for sw in sweeps)
    n_steps = total_steps(tc)
    autocast = first.policy.autocast()
    batches = _rank_batches(first.source, tc.batch_size, first.order_seed, start)
    if first.policy.device.type == "cuda":  # read, decode and pin the next batches meanwhile
        batches = prefetch(batches, depth=2, pin_memory=True)
    archs = "" if len(sweeps) == 1 else f" ({len(sweeps)} runs)"
    bar = tqdm(total=n_steps, initial=start, disable=not progress or not main, unit="step",
               desc=f"train {first.train_corpus or first.out_dir.name} seed "
                    f"{first.replicate}{archs}", position=bar_position)
    files = [[open(m.path, "a") if main else None for m in sw.members]  # noqa: SIM115
             for sw in sweeps]
    try:
        for step in range(start, n_steps):
            raw, scaled = next(batches), {}
            for sw, metric_files in zip(sweeps, files, strict=True):
                if step < sw.start:  # resumed from a later checkpoint than another sweep
                    continue
                if id(sw.norm) not in scaled:  # sweeps started together share their norm
                    scaled[id(sw.norm)] = _scaled_batch(sw, raw, step)
                if _step_sweep(sw, scaled[id(sw.norm)], step, metric_files, autocast):
                    bar.set_postfix_str(_postfix(sweeps))
            bar.update(1)
    finally:
        bar.close()
        for f in (f for fs in files for f in fs):
            if f is not None:
                f.close()


def _step_sweep(sw: _Sweep, x: Float[Tensor, "rows d_model"], step: int,
                metric_files: Sequence[Any], autocast: contextlib.AbstractContextManager
                ) -> bool:
    """Step ``step`` of one sweep: its SAEs' optimiser steps on the scaled rows ``x``, then
    its snapshots and checkpoint when due. Returns whether the step was logged."""
    tc = sw.cfg.train
    logged = _step_members(sw, x, step, metric_files, autocast)
    for budget in snapshot_steps(tc).get(step + 1, []) if runtime.is_main() else []:
        _save_saes(sw, step + 1, budget)
    if tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0:
        _checkpoint(sw, step + 1)
    return logged


def _postfix(sweeps: Sequence[_Sweep]) -> str:
    """The progress bar's last logged L0, loss, FVE and dead fraction of every SAE (named
    by architecture when runs share the pass)."""
    named = len(sweeps) > 1
    return " | ".join(
        f"{sw.cfg.sae.architecture + ' ' if named else ''}L0 {m.last.l0:.0f}/{m.target:g} "
        f"loss {m.last.loss:.3g} FVE {m.last.fve:.3f} dead {m.last.dead_frac:.2f}"
        for sw in sweeps for m in sw.members if m.last is not None)


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
            **({"snapshot_tokens": budget} if budget is not None else {}),
            **({"l1_coeff": m.l1_coeff} if m.l1_coeff is not None else {}),
            **_weights_metadata(sw.source)})
        write_json_atomic(out / CONFIG_NAME, sw.cfg.to_dict())


def _weights_metadata(source: BatchSource) -> dict[str, Any]:
    """``{"weights": record}`` of the model whose activations ``source`` holds (the exact
    weights, read by :func:`~sae_med.lm.weights.recorded_weights` when the SAE is exported
    or scored); {} for a source that knows no model (tensors handed in)."""
    record = getattr(source, "weights", None)  # a cache's or a stream's WeightsRecord
    return {} if record is None else {"weights": record.to_dict()}


def saved_metadata(sae_dir: Path) -> dict[str, Any]:
    """The metadata an SAE was saved with (``cfg.json``; {} when there is none)."""
    path = sae_dir / CFG_FILENAME
    return json.loads(path.read_text()).get("metadata", {}) if path.exists() else {}


class SavedRun(NamedTuple):
    """The run that saved every SAE of a sweep: its run key and step count."""

    run_key: str
    steps: int


def saved_run(sae_dirs: Iterable[Path]) -> SavedRun | None:
    """The one run (key and steps) every SAE in ``sae_dirs`` was saved by; None when one is
    unsaved or two were saved by different runs or at different steps."""
    runs = {(m.get("run_key"), m.get("steps")) for m in map(saved_metadata, sae_dirs)}
    if len(runs) != 1 or None in (run := runs.pop()):
        return None
    return SavedRun(*run)


def _saved(sw: _Sweep, steps: int) -> bool:
    """Whether every SAE of the sweep is already saved from this run after ``steps``
    steps (a finished run then rewrites nothing)."""
    return saved_run(m.path.parent for m in sw.members) == (sw.key, steps)


def finished_results(cfg: Config, source: BatchSource, out_dir: str | Path,
                     train_corpus: str = "", replicate: int = 0) -> list[TrainResult] | None:
    """The results of a finished sweep, read from its SAEs' metadata and metrics logs: no
    checkpoint is opened and no file written. None unless every target was saved by this
    run key after the last step."""
    key, steps = run_key(cfg, source, train_corpus, replicate), total_steps(cfg.train)
    sae_dirs = {t: Path(out_dir) / sae_dirname(t) for t in cfg.sae.l0_targets}
    if saved_run(sae_dirs.values()) != (key, steps):
        return None
    return [TrainResult(target, d, steps, steps * cfg.train.batch_size,
                        float(saved_metadata(d)["input_scale"]),
                        last_metrics(d / METRICS_NAME), train_corpus, replicate)
            for target, d in sae_dirs.items()]


def sweep_finished(cfg: Config, source: BatchSource, out_dir: str | Path,
                   train_corpus: str = "", replicate: int = 0) -> bool:
    """Whether :func:`train_saes` with ``resume`` would only reuse finished SAEs (every
    target saved by this run key after the last step)."""
    return finished_results(cfg, source, out_dir, train_corpus, replicate) is not None


def train_saes(cfg: Config, source: BatchSource, out_dir: str | Path, resume: bool = False,
               progress: bool = True, d_model: int | None = None,
               init_saes: Sequence[LinearSAE] | None = None, train_corpus: str = "",
               replicate: int = 0, retrain_other_run: bool = False, bar_position: int = 0
               ) -> list[TrainResult]:
    """Train one SAE of ``cfg.sae.architecture`` per ``cfg.sae.l0_targets`` from one pass
    over ``source``.

    Args:
        cfg: resolved config (``cfg.sae``, ``cfg.train``, ``cfg.seed``).
        source: activation batches; batch ``k`` of ``iter_batches(batch_size,
            batch_seed(cfg.seed, replicate))`` is step ``k``.
        out_dir: run directory (see the module docstring for its layout).
        resume: continue from ``out_dir/checkpoint.pt`` if present (same config required);
            a finished sweep is reused from its saved metadata (:func:`finished_results`).
        progress: show a tqdm bar.
        d_model: expected activation width; a mismatch with ``source.d_model`` is an error.
        init_saes: optional starting SAEs of the config's architecture (raw-activation
            space, e.g. loaded with :func:`sae_med.sae.factory.load_sae`), one per target,
            instead of the paper's init.
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
    if resume and init_saes is None:
        done = finished_results(cfg, source, out_dir, train_corpus, replicate)
        if done is not None:
            log.info("reusing the finished sweep in %s", out_dir)
            return done
    [results] = _train([SweepRun(cfg, Path(out_dir))], source, resume, progress, init_saes,
                       train_corpus, replicate, retrain_other_run, bar_position)
    return results


class SweepRun(NamedTuple):
    """One run's sweep in a pass that several runs share (:func:`train_sweeps`)."""

    cfg: Config
    """The run's resolved config: its ``sae`` section picks the SAEs."""
    out_dir: Path
    """Where that run's own :func:`train_saes` would train this sweep."""


def train_sweeps(runs: Sequence[SweepRun], source: BatchSource, train_corpus: str = "",
                 replicate: int = 0, resume: bool = False, progress: bool = True,
                 retrain_other_run: bool = False, bar_position: int = 0
                 ) -> list[list[TrainResult]]:
    """:func:`train_saes` of several runs' sweeps of the same corpus and replicate (e.g.
    one per ``sae.architecture``) from one pass over ``source``: each batch is read and
    scaled once and stepped by every SAE of every run.

    The runs must share ``seed`` and the ``train`` section (hence the batches, the input
    scale and the schedules); their ``sae`` sections may differ in anything. Each run's
    folder gets the files, checkpoints and metadata its own :func:`train_saes` would write,
    bit for bit (every SAE's initialisation and steps depend only on its own run), and
    resumes on its own. With ``resume``, finished sweeps are reused and the others resume
    from their checkpoints, the pass from the earliest one. Returns each run's results
    in ``runs`` order.
    """
    _check_shared(runs)
    for r in runs:
        _check_inputs(r.cfg, source, None, None)
    done = [finished_results(r.cfg, source, r.out_dir, train_corpus, replicate)
            if resume else None for r in runs]
    todo = [SweepRun(r.cfg, Path(r.out_dir)) for r, d in zip(runs, done, strict=True)
            if d is None]
    trained = iter(_train(todo, source, resume, progress, None, train_corpus, replicate,
                          retrain_other_run, bar_position) if todo else [])
    return [d if d is not None else next(trained) for d in done]


def _check_shared(runs: Sequence[SweepRun]) -> None:
    """Refuse runs that cannot share a pass: another seed or ``train`` section (other
    batches or schedules), or two runs training into one folder."""
    if not runs:
        raise TrainingError("train_sweeps needs at least one run")
    first = runs[0].cfg
    for i, r in enumerate(runs[1:], start=1):
        if (r.cfg.seed, r.cfg.train) != (first.seed, first.train):
            raise TrainingError(
                f"runs[{i}] ({r.cfg.name!r}) differs from runs[0] ({first.name!r}) in seed "
                f"or the train section; only sweeps of the same batches share a pass")
    folders = [Path(r.out_dir).resolve() for r in runs]
    if len(set(folders)) < len(folders):
        raise TrainingError(f"two runs train into the same folder: {folders}")


def _train(runs: Sequence[SweepRun], source: BatchSource, resume: bool, progress: bool,
           init_saes: Sequence[LinearSAE] | None, train_corpus: str, replicate: int,
           retrain_other_run: bool, bar_position: int) -> list[list[TrainResult]]:
    """:func:`train_sweeps` after its checks, holding every folder's lock."""
    tc, seed = runs[0].cfg.train, runs[0].cfg.seed
    # one estimate for every sweep that starts fresh (the same batches give the same norm)
    norm = functools.cache(functools.partial(
        estimate_input_norm, source, tc.batch_size, tc.norm_batches,
        derived_seed(seed, "norm"), tc.center_inputs))
    n_steps = total_steps(tc)
    with _run_locks([r.out_dir for r in runs]):
        sweeps = [_start(r.cfg, source, r.out_dir, resume, init_saes, train_corpus,
                         replicate, retrain_other_run, norm) for r in runs]
        earliest = min(sweeps, key=lambda sw: sw.start)
        if isinstance(source, ResumableSource) and earliest.source_state:
            source.load_state_dict(earliest.source_state[runtime.rank()])
        _run_steps(sweeps, progress, bar_position)
        for sw in sweeps:
            if sw.start < n_steps:  # a finished run's checkpoint is already this one
                _checkpoint(sw, n_steps)
            if runtime.is_main() and not _saved(sw, n_steps):
                _save_saes(sw, n_steps)
        runtime.barrier()  # the other ranks return only once rank 0's files are in place
    return [[TrainResult(m.target, m.path.parent, n_steps, n_steps * tc.batch_size,
                         sw.norm.scale, m.last or last_metrics(m.path), train_corpus,
                         replicate) for m in sw.members] for sw in sweeps]


def _start(cfg: Config, source: BatchSource, out_dir: Path, resume: bool,
           init_saes: Sequence[LinearSAE] | None, train_corpus: str, replicate: int,
           retrain_other_run: bool, fresh_norm: Callable[[], InputNorm]) -> _Sweep:
    """The sweep set up in ``out_dir``: fresh (its input norm from ``fresh_norm``), or
    restored from its checkpoint."""
    tc = cfg.train
    policy = step_policy(tc)
    key = run_key(cfg, source, train_corpus, replicate)
    out_dir.mkdir(parents=True, exist_ok=True)
    if runtime.is_main():
        write_json_atomic(out_dir / CONFIG_NAME, cfg.to_dict())
    state = starting_state(out_dir, key, policy.device, resume, retrain_other_run)
    runtime.barrier()  # every rank has read the checkpoint before rank 0 may replace it
    norm = (InputNorm(state["mean"].cpu(), state["scale"]) if state is not None else
            fresh_norm())
    members = _new_members(cfg, source, out_dir, norm, policy, state, init_saes,
                           train_corpus, replicate)
    sw = _Sweep(cfg, source, out_dir, key, train_corpus, replicate, norm, policy, members,
                paper_init=init_saes is None)
    sw.start = _restore(sw, state)
    for m in members if policy.compile else []:
        if isinstance(m.sae, JumpReLUSAE):  # the other architectures step eagerly
            m.compiled = torch.compile(functools.partial(dense_terms, m.sae))
    _log_start(sw)
    return sw


def _log_start(sw: _Sweep) -> None:
    tc, policy = sw.cfg.train, sw.policy
    kernel = tc.kernel if tc.kernel != "auto" else (
        "auto (sparse when L0 is low)" if policy.sparse_ok else "dense")
    ws = runtime.world_size()
    log.info("training %d SAEs (width %d, targets %s) for %d steps of %d on %s, %s kernel%s%s%s",
             len(sw.members), sw.cfg.sae.width, list(sw.cfg.sae.l0_targets), total_steps(tc),
             tc.batch_size, policy.device, kernel, ", bf16 autocast" if policy.bf16 else "",
             ", compiled" if policy.compile else "",
             f", data-parallel over {ws} ranks" if ws > 1 else "")
