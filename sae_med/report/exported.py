"""What an export is made of: the SAEs a folder holds, where each came from, its scores."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from jaxtyping import Float
from torch import Tensor

from sae_med import __version__
from sae_med.cache.activations import ActivationCache
from sae_med.config import Config, ConfigError, config_from_dict
from sae_med.layout import CFG_FILENAME, CONFIG_NAME, RESULTS_NAME, SAES_DIR, WEIGHTS_FILENAME
from sae_med.lm.weights import WeightsRecord, recorded_weights, weights_record

ExportFormat = Literal["sae_lens", "gemma_scope", "saebench", "neuronpedia"]
FORMATS: tuple[ExportFormat, ...] = ("sae_lens", "gemma_scope", "saebench", "neuronpedia")
RUN_FORMATS: tuple[ExportFormat, ...] = ("saebench", "neuronpedia")
"""The formats that also write run-level files, read from eval caches (:class:`RunInputs`)."""
SAEBENCH_CFG = "saebench_cfg.json"
"""SAEBench's ``CustomSAEConfig`` of an SAE, read by :mod:`sae_med.report.saebench`'s loader."""
FORMAT_FILES: dict[str, tuple[str, ...]] = {
    "sae_lens": ("cfg.json", "sae_weights.safetensors"),
    "gemma_scope": ("params.npz", "metadata.json"),
    "saebench": ("cfg.json", "sae_weights.safetensors", SAEBENCH_CFG),
    "neuronpedia": ("cfg.json", "sae_weights.safetensors"),
}
"""The files each format writes into an SAE's export folder."""
SAEBENCH_DIR = "saebench"
"""Under the export folder: ``{eval corpus}/core/{release}_{sae id}_eval_results.json``."""
NEURONPEDIA_DIR = "neuronpedia"
"""Under the export folder: ``{model}/{layer}-{source set}/``, one per SAE."""
ARCHITECTURE_NAMES = {"jumprelu": "JumpReLU", "relu": "ReLU (L1)", "topk": "TopK",
                      "batchtopk": "BatchTopK", "matryoshka_batchtopk": "Matryoshka-BatchTopK"}
"""How a model card or a Neuronpedia release names each ``sae.architecture``."""
LENS_AS_JUMPRELU = ("batchtopk", "matryoshka_batchtopk")
"""Architectures sae-lens holds as JumpReLU SAEs: their inference encoding is a JumpReLU
with the learnt threshold on every latent, which is how sae-lens saves its own."""


def export_formats(architecture: str) -> tuple[ExportFormat, ...]:
    """The formats an SAE of ``architecture`` exports to: Gemma Scope's ``params.npz``
    holds JumpReLU SAEs alone; the others carry sae-lens files, which hold every one."""
    return tuple(f for f in FORMATS if f != "gemma_scope" or architecture == "jumprelu")


class ExportError(RuntimeError):
    """An SAE cannot be exported or pushed; the message says what to do."""


def check_exportable(p: Provenance, fmt: ExportFormat) -> None:
    """Refuse, in one line naming the formats it can go to, an SAE that ``fmt`` cannot hold."""
    if fmt not in (allowed := export_formats(p.architecture)):
        name = ARCHITECTURE_NAMES.get(p.architecture, p.architecture)
        raise ExportError(f"{p.sae_id} is a {name} SAE: --format {fmt} holds JumpReLU SAEs "
                          f"only; a {name} SAE exports to {', '.join(allowed)}")


@dataclass(frozen=True)
class Provenance:
    """What a trained SAE is and what it was trained on (read from its folder)."""

    sae_id: str
    """Name within its run, ``{train_corpus}/seed_{r}/l0_{target}`` (the results'
    ``sae_id``, :func:`sae_med.layout.sae_id`)."""
    model_name: str
    """The model as sae-lens metadata names it: the hub id only when the SAE was trained on
    that checkpoint's own weights; else sae-med's name (``embedded:gemma-3-270m``), so no
    tool loads the original checkpoint for it as if it were the same model."""
    sae_med_model: str
    """sae-med's ``model.name`` (``embedded:gemma-3-270m`` or the hub id)."""
    weights: WeightsRecord
    """The exact weights whose activations it was trained on; the hub id they come from
    is ``weights.derived_from``."""
    hook_name: str
    """TransformerLens hook whose activations the SAE reads."""
    d_in: int
    d_sae: int
    architecture: str
    """sae-med's ``sae.architecture`` (:data:`ARCHITECTURE_NAMES`); the export may hold it
    as another sae-lens architecture (:data:`LENS_AS_JUMPRELU`)."""
    train_corpus: str
    l0_target: float | None
    training_tokens: int | None
    seed: int
    """The run's seed (initialisation and batch order derive from it)."""
    replicate: int | None
    """Seed replicate of the run (``saes/{corpus}/seed_{r}/``), when the run has them."""
    init_seed: int | None
    """The SAE's own initialisation seed, when recorded."""
    input_scale: float | None
    """The scalar s the SAE trained on (E||s x||^2 = 1); folded in, so inputs are raw."""
    context_size: int
    exclude_special_tokens: bool
    """Whether BOS / EOS / pad positions were left out of training."""

    def metadata(self) -> dict[str, Any]:
        """sae-lens metadata: its own keys (model_name, hook_name, ...) plus sae-med's."""
        return {"model_name": self.model_name, "hook_name": self.hook_name,
                "hook_head_index": None, "model_class_name": "HookedTransformer",
                "context_size": self.context_size, "prepend_bos": True,
                "exclude_special_tokens": self.exclude_special_tokens,
                "dataset_path": f"sae-med:{self.train_corpus}",
                "normalization": "input scale folded into the weights; takes raw activations",
                "sae_med": {**asdict(self), "version": __version__}}


class Score(NamedTuple):
    """One metric of one SAE on one eval corpus, with its 95% interval (None: point)."""

    eval_corpus: str
    metric: str
    value: float
    low: float | None
    high: float | None


class ModelLens(NamedTuple):
    """What Neuronpedia's feature records need of the language model."""

    tokenizer: Any
    """Decodes the token ids of activation windows and logit-lens tokens."""
    unembed: Float[Tensor, "d_model d_vocab"]
    n_layers: int
    d_model: int


class RunInputs(NamedTuple):
    """What the run-level formats read besides the SAEs, handed in by the orchestrator
    (:func:`sae_med.experiment.export_inputs`): an export builds no cache, loads no model."""

    config: Config
    """The config the SAEs were trained with (:func:`sae_config`)."""
    caches: Mapping[str, ActivationCache]
    """Eval-split activation caches, by corpus (:meth:`ExportNeeds.eval_corpora`)."""
    lens: ModelLens | None = None
    """For ``neuronpedia``."""


class ExportNeeds(NamedTuple):
    """What a run-level format will read (:func:`export_needs`)."""

    config: Config
    eval_corpora: list[str]
    """The corpora whose eval caches it reads."""
    model: bool
    """Whether it needs a :class:`ModelLens`."""


def window_corpus(train_corpus: str, cfg: Config) -> str:
    """The eval corpus whose text shows an SAE's features: its training corpus when that is
    evaluated, else the first eval corpus."""
    return train_corpus if train_corpus in cfg.eval_corpora else cfg.eval_corpora[0]


@dataclass(frozen=True)
class ExportedSAE:
    provenance: Provenance
    path: Path
    """The SAE's export folder."""
    scores: tuple[Score, ...]
    """From the run's ``results.json`` (empty when there is none)."""


# ---------------------------------------------------------------------------- sources

def find_saes(source: str | Path) -> dict[str, Path]:
    """``{sae_id: folder}``: a run folder's SAEs (every ``saes/**/cfg.json``), or one SAE
    folder (id ``{parent}/{folder}``)."""
    source = Path(source)
    if (source / SAES_DIR).is_dir():
        root = source / SAES_DIR
        found = {cfg.parent.relative_to(root).as_posix(): cfg.parent
                 for cfg in sorted(root.glob(f"**/{CFG_FILENAME}"))
                 if (cfg.parent / WEIGHTS_FILENAME).exists()}
        if not found:
            raise ExportError(f"{root} holds no trained SAE: run `sae-med train` first")
        return found
    if (source / CFG_FILENAME).exists() and (source / WEIGHTS_FILENAME).exists():
        saes = run_saes_dir(source)
        return {source.resolve().relative_to(saes).as_posix() if saes else
                f"{source.parent.name}/{source.name}": source}
    if not source.exists():
        raise ExportError(f"{source}: no such folder; pass a run folder (runs/NAME) or one "
                          f"SAE folder (runs/NAME/{SAES_DIR}/CORPUS/seed_0/l0_TARGET)")
    raise ExportError(f"{source}: neither a run folder (with {SAES_DIR}/) nor a sae-med SAE folder "
                      f"({CFG_FILENAME} + {WEIGHTS_FILENAME})")


def run_saes_dir(sae_dir: Path) -> Path | None:
    """The run's ``saes/`` folder above an SAE folder, if it lies in a run."""
    return next((p for p in sae_dir.resolve().parents if p.name == SAES_DIR), None)


def sae_config(sae_dir: Path) -> Config:
    """The run config that ``sae-med train`` writes beside an SAE."""
    run_cfg = sae_dir / CONFIG_NAME
    if not run_cfg.exists():
        raise ExportError(f"{run_cfg} is missing: export needs the config that trained the "
                          "SAE (sae-med train writes it beside cfg.json)")
    try:
        return config_from_dict(json.loads(run_cfg.read_text()))
    except (json.JSONDecodeError, ConfigError) as e:
        raise ExportError(f"{run_cfg} is not a readable sae-med config: {e}") from e


def export_needs(source: str | Path, fmt: ExportFormat) -> ExportNeeds | None:
    """What exporting ``source`` in ``fmt`` reads besides the SAEs (None: nothing): the
    first SAE's config, and the eval corpora of SAEBench's core results (every one) or of
    Neuronpedia's activation windows (:func:`window_corpus` of each SAE)."""
    if fmt not in RUN_FORMATS:
        return None
    saes = find_saes(source)
    cfg = sae_config(next(iter(saes.values())))
    corpora = list(cfg.eval_corpora) if fmt == "saebench" else list(dict.fromkeys(
        window_corpus(read_provenance(d, i).train_corpus, cfg) for i, d in saes.items()))
    return ExportNeeds(cfg, corpora, fmt == "neuronpedia")


def read_provenance(sae_dir: Path, sae_id: str) -> Provenance:
    """Provenance from the SAE's ``cfg.json`` metadata and the run ``config.json`` that
    ``sae-med train`` writes beside it."""
    cfg = sae_config(sae_dir)
    sae_cfg = json.loads((sae_dir / CFG_FILENAME).read_text())
    md = sae_cfg.get("metadata") or {}
    weights = recorded_weights(sae_dir) or weights_record(cfg.model.name)
    original = weights.source.startswith("hub:") and weights.quantization is None
    return Provenance(
        sae_id=sae_id, model_name=weights.derived_from if original else cfg.model.name,
        sae_med_model=cfg.model.name, weights=weights, hook_name=cfg.model.hook_name,
        d_in=sae_cfg["d_model"], d_sae=sae_cfg["d_sae"],
        architecture=sae_cfg.get("architecture", ""),
        train_corpus=md.get("train_corpus", sae_dir.parent.name),
        l0_target=md.get("l0_target"), training_tokens=md.get("tokens"),
        seed=cfg.seed, replicate=md.get("replicate"), init_seed=md.get("init_seed"),
        input_scale=md.get("input_scale"),
        context_size=cfg.cache.ctx_len, exclude_special_tokens=cfg.cache.exclude_special)


def results_path(source: Path) -> Path | None:
    """The run's ``results.json`` for a run folder or one of its SAE folders, if any."""
    saes = run_saes_dir(source)
    candidates = [source / RESULTS_NAME, *([saes.parent / RESULTS_NAME] if saes else [])]
    return next((p for p in candidates if p.exists()), None)


def read_scores(path: Path | None, sae_id: str) -> tuple[Score, ...]:
    """The :data:`CARD_METRICS` of ``sae_id``'s rows in a results JSON."""
    if path is None:
        return ()
    rows = json.loads(path.read_text()).get("rows", [])
    return tuple(Score(row["eval_corpus"], name, m["value"], m.get("low"), m.get("high"))
                 for row in rows if row.get("sae_id") == sae_id
                 for name in CARD_METRICS if (m := row["metrics"].get(name)) is not None)


CARD_METRICS = {"l0": "L0", "fve": "FVE", "loss_recovered": "loss recovered",
                "delta_ce": "ΔCE (nats)", "dead_frac": "dead"}
"""Metrics of ``results.json`` shown in the model card, with their column titles."""
