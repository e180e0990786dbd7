"""Export trained SAEs to other tools' formats and share them on the Hugging Face hub.

``sae_lens``: ``cfg.json`` + ``sae_weights.safetensors``, loaded by
``sae_lens.SAE.load_from_disk`` (or ``SAE.from_pretrained(REPO, SAE_ID)`` once pushed).
``gemma_scope``: ``params.npz`` as in google/gemma-scope-*, plus ``metadata.json``.
``saebench``: the sae-lens files, SAEBench's config for :mod:`sae_med.report.saebench`'s loader,
and SAEBench core results on the run's eval tokens.
Each holds the SAE on raw activations (the training normalisation is folded into the
weights) and the exact weights it was trained on (:mod:`sae_med.lm.weights`); every export
gets a model card (``README.md``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from sae_med import __version__
from sae_med.artifacts import atomic_path, write_json_atomic, write_text_atomic
from sae_med.config import ConfigError, config_from_dict
from sae_med.layout import CFG_FILENAME, RESULTS_NAME, SAES_DIR, WEIGHTS_FILENAME
from sae_med.lm.weights import WeightsRecord, recorded_weights, weights_record
from sae_med.sae.io import to_sae_lens
from sae_med.sae.jumprelu import JumpReLUSAE

log = logging.getLogger(__name__)

ExportFormat = Literal["sae_lens", "gemma_scope", "saebench", "neuronpedia"]
FORMATS: tuple[ExportFormat, ...] = ("sae_lens", "gemma_scope", "saebench", "neuronpedia")
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
CARD_FILENAME = "README.md"
CARD_METRICS = {"l0": "L0", "fve": "FVE", "loss_recovered": "loss recovered",
                "delta_ce": "ΔCE (nats)", "dead_frac": "dead"}
"""Metrics of ``results.json`` shown in the model card, with their column titles."""


class ExportError(RuntimeError):
    """An SAE cannot be exported or pushed; the message says what to do."""


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


def read_provenance(sae_dir: Path, sae_id: str) -> Provenance:
    """Provenance from the SAE's ``cfg.json`` metadata and the run ``config.json`` that
    ``sae-med train`` writes beside it."""
    run_cfg = sae_dir / "config.json"
    if not run_cfg.exists():
        raise ExportError(f"{run_cfg} is missing: export needs the config that trained the "
                          "SAE (sae-med train writes it beside cfg.json)")
    try:
        cfg = config_from_dict(json.loads(run_cfg.read_text()))
    except (json.JSONDecodeError, ConfigError) as e:
        raise ExportError(f"{run_cfg} is not a readable sae-med config: {e}") from e
    sae_cfg = json.loads((sae_dir / CFG_FILENAME).read_text())
    md = sae_cfg.get("metadata") or {}
    weights = recorded_weights(sae_dir) or weights_record(cfg.model.name)
    original = weights.source.startswith("hub:") and weights.quantization is None
    return Provenance(
        sae_id=sae_id, model_name=weights.derived_from if original else cfg.model.name,
        sae_med_model=cfg.model.name, weights=weights, hook_name=cfg.model.hook_name,
        d_in=sae_cfg["d_model"], d_sae=sae_cfg["d_sae"],
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


# ---------------------------------------------------------------------------- writers

def _clear_other_formats(out: Path, fmt: ExportFormat) -> None:
    """Remove another format's files, so a folder never holds two SAEs that disagree."""
    for other, names in FORMAT_FILES.items():
        if other != fmt:
            for name in names:
                (out / name).unlink(missing_ok=True)


def write_sae_lens(sae: JumpReLUSAE, prov: Provenance, out: Path) -> Path:
    """``cfg.json`` (metadata of :meth:`Provenance.metadata`) + ``sae_weights.safetensors``,
    written by sae-lens's own ``save_model`` so its loader reads them back."""
    from sae_lens.saes.sae import SAEMetadata

    lens = to_sae_lens(sae)
    lens.cfg.metadata = SAEMetadata(**prov.metadata())
    lens.cfg.device = "cpu"
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        lens.save_model(tmp)
        for name in FORMAT_FILES["sae_lens"][::-1]:  # weights first: cfg.json marks complete
            os.replace(Path(tmp) / name, out / name)
    return out


def write_gemma_scope(sae: JumpReLUSAE, prov: Provenance, out: Path) -> Path:
    """``params.npz`` (float32 W_enc, W_dec, b_enc, b_dec, threshold; Gemma Scope's names
    and shapes) + ``metadata.json``."""
    folded = sae.folded()
    params = {"W_enc": folded.W_enc, "W_dec": folded.W_dec, "b_enc": folded.b_enc,
              "b_dec": folded.b_dec, "threshold": folded.threshold}
    with atomic_path(out / "params.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: v.detach().float().cpu().numpy() for k, v in params.items()})
    write_json_atomic(out / "metadata.json", {"architecture": "jumprelu", "d_in": prov.d_in,
                                              "d_sae": prov.d_sae, **prov.metadata()})
    return out


def write_saebench(sae: JumpReLUSAE, prov: Provenance, out: Path) -> Path:
    """The sae-lens files plus ``saebench_cfg.json`` (SAEBench's ``CustomSAEConfig``),
    which :meth:`sae_med.report.saebench.SAEBenchJumpReLU.load` reads."""
    from sae_med.report.saebench import CustomSAEConfig

    write_sae_lens(sae, prov, out)
    cfg = CustomSAEConfig(
        model_name=prov.model_name, d_in=prov.d_in, d_sae=prov.d_sae,
        hook_layer=int(prov.hook_name.split(".")[1]), hook_name=prov.hook_name,
        context_size=prov.context_size, dataset_path=f"sae-med:{prov.train_corpus}",
        training_tokens=prov.training_tokens or -100_000)
    write_json_atomic(out / SAEBENCH_CFG, cfg.to_dict())
    return out


WRITERS = {"sae_lens": write_sae_lens, "gemma_scope": write_gemma_scope,
           "saebench": write_saebench, "neuronpedia": write_sae_lens}


def export_saes(source: str | Path, fmt: ExportFormat, out: str | Path) -> list[ExportedSAE]:
    """Export one SAE folder into ``out``, or every SAE of a run folder into
    ``out/{sae_id}``, in format ``fmt``; then write the model card ``out/README.md``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    source, out = Path(source), Path(out)
    saes = find_saes(source)
    single = not (source / SAES_DIR).is_dir()
    scores_from = results_path(source)
    exported = []
    for sae_id, sae_dir in saes.items():
        prov = read_provenance(sae_dir, sae_id)
        target = out if single else out / sae_id
        target.mkdir(parents=True, exist_ok=True)
        _clear_other_formats(target, fmt)
        WRITERS[fmt](JumpReLUSAE.load(sae_dir), prov, target)
        exported.append(ExportedSAE(prov, target, read_scores(scores_from, sae_id)))
        log.info("exported %s -> %s (%s)", sae_id, target, fmt)
    if fmt == "saebench":  # run-level files: the format modules need the model and caches
        from sae_med.report.saebench import write_core_results

        write_core_results(exported, saes, scores_from, out)
    if fmt == "neuronpedia":
        from sae_med.report.neuronpedia import write_neuronpedia

        write_neuronpedia(exported, saes, out)
    write_text_atomic(out / CARD_FILENAME, model_card(exported, fmt, out))
    return exported


# ---------------------------------------------------------------------------- model card

def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}"


def _score_cell(s: Score) -> str:
    if s.low is None or s.high is None:
        return _fmt(s.value)
    return f"{_fmt(s.value)} [{_fmt(s.low)}, {_fmt(s.high)}]"


def _loading(fmt: ExportFormat, folders: Sequence[str], repo_id: str | None) -> str:
    example = folders[0]
    if fmt == "sae_lens":
        imports, code = ["from sae_lens import SAE"], []
        if repo_id and example == ".":  # one SAE at the repo's root: no SAE id to name
            imports.append("from huggingface_hub import snapshot_download")
            code.append(f'sae = SAE.load_from_disk(snapshot_download("{repo_id}"))  # hub')
        elif repo_id:
            code.append(f'sae = SAE.from_pretrained("{repo_id}", "{example}")  # from the hub')
        code.append(f'sae = SAE.load_from_disk("{example}")  # from a local copy')
        return "```python\n" + "\n".join(imports + [""] + code) + "\n```\n"
    if fmt == "neuronpedia":
        return ("```python\nfrom sae_lens import SAE\n\n"
                f'sae = SAE.load_from_disk("{example}")\n```\n\nNeuronpedia upload files '
                f"(one source per SAE): `{NEURONPEDIA_DIR}/MODEL/LAYER-SOURCESET/`.\n")
    if fmt == "saebench":
        return ("```python\nfrom sae_med.report.saebench import SAEBenchJumpReLU\n\n"
                f'sae = SAEBenchJumpReLU.load("{example}")  # SAEBench custom-SAE interface\n'
                "```\n\nSAEBench core results (its eval_output schema, on sae-med's eval "
                f"tokens): `{SAEBENCH_DIR}/EVAL_CORPUS/core/`.\n")
    return ("```python\nimport numpy as np\n\n"
            f'params = np.load("{example}/params.npz")  # W_enc, W_dec, b_enc, b_dec, '
            "threshold\n```\n\nor score it with sae-med: "
            f"`sae-med evaluate CONFIG --sae {example}`.\n")


def _weights_section(provs: Sequence[Provenance]) -> list[str]:
    """The exact weights each SAE was trained on, and what that means for its users."""
    lines = ["## Model weights", "", "The activations these SAEs were trained on came from:",
             ""]
    for w in sorted({p.weights for p in provs}, key=lambda w: w.model):
        lines.append(f"- `{w.model}`: " + (
            f"`{w.file}` (sha256 `{w.sha256}`) from `{w.source}`" if w.file else
            f"`{w.source}`" + (f" (weights sha256 `{w.sha256}`)" if w.sha256 else "")))
        if w.quantization:
            lines.append(f"  - {w.quantization}; derived from {w.derived_from}. The original "
                         "checkpoint's activations differ: used with it, these SAEs get "
                         "inputs they were not trained on (`sae-med evaluate` warns).")
    return lines + [""]


def model_card(exported: Sequence[ExportedSAE], fmt: ExportFormat, out: Path,
               repo_id: str | None = None) -> str:
    """README.md with YAML front matter: what each SAE was trained on and how it scored."""
    if not exported:
        raise ExportError("nothing to describe: no SAE was exported")
    provs = [e.provenance for e in exported]
    models = sorted({p.model_name for p in provs})
    bases = sorted({p.weights.derived_from for p in provs if p.weights.derived_from})
    hooks = sorted({p.hook_name for p in provs})
    folders = [e.path.relative_to(out).as_posix() if e.path != out else "." for e in exported]
    lens = fmt != "gemma_scope"  # the others write sae-lens's files
    tags = ["sparse-autoencoder", "jumprelu", "sae-med",
            {"gemma_scope": "gemma-scope-format"}.get(fmt, fmt)]
    front = (["---"] + (["library_name: saelens"] if lens else [])
             + ([f"base_model: {bases[0]}"] if len(bases) == 1 else
                ["base_model:", *[f"- {b}" for b in bases]] if bases else [])
             + ["tags:"] + [f"- {t}" for t in tags] + ["---", ""])
    lines = [f"# JumpReLU SAEs on {', '.join(models)} ({', '.join(hooks)})", "",
             f"Trained with sae-med {__version__} (domain-specific vs broad sparse "
             f"autoencoders). Format: `{fmt}`. Inputs are raw activations at the hook: the "
             "training normalisation (a scalar s with E‖s·x‖² = 1) is folded into the "
             "weights.", "", "## Loading", "", _loading(fmt, folders, repo_id),
             *_weights_section(provs), "## Training", "",
             "| SAE | folder | model | hook | corpus | target L0 | width | tokens | seed "
             "| input scale s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p, folder in zip(provs, folders, strict=True):
        lines.append(f"| {p.sae_id} | `{folder}` | {p.model_name} | {p.hook_name} | "
                     f"{p.train_corpus} | {_fmt(p.l0_target)} | {p.d_sae} | "
                     f"{p.training_tokens if p.training_tokens is not None else '–'} | "
                     f"{p.seed} | {_fmt(p.input_scale, 4)} |")
    lines += ["", "## Scores", ""]
    if not any(e.scores for e in exported):
        lines.append("Not evaluated yet (`sae-med evaluate` writes the run's results.json).")
    else:
        lines += ["Held-out split of each eval corpus; 95% bootstrap intervals over "
                  "documents in brackets.", "",
                  "| SAE | eval corpus | " + " | ".join(CARD_METRICS.values()) + " |",
                  "|---|---|" + "---|" * len(CARD_METRICS)]
        for e in exported:
            by_corpus: dict[str, dict[str, Score]] = {}
            for s in e.scores:
                by_corpus.setdefault(s.eval_corpus, {})[s.metric] = s
            for corpus, cells in by_corpus.items():
                lines.append(f"| {e.provenance.sae_id} | {corpus} | " + " | ".join(
                    _score_cell(cells[m]) if m in cells else "–" for m in CARD_METRICS)
                    + " |")
    return "\n".join(front + lines) + "\n"


# ---------------------------------------------------------------------------- hub

def stage_for_hub(source: str | Path, fmt: ExportFormat, out: str | Path,
                  repo_id: str) -> list[Path]:
    """Export into ``out`` with a card that names ``repo_id``; returns the files
    :func:`push_to_hub` would upload (relative to ``out``), without touching the network."""
    out = Path(out)
    exported = export_saes(source, fmt, out)
    write_text_atomic(out / CARD_FILENAME, model_card(exported, fmt, out, repo_id))
    if fmt != "gemma_scope":  # the others hold sae-lens folders a registry entry can name
        write_text_atomic(out / REGISTRY_FILENAME, registry_entry(exported, out, repo_id))
    return sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())


REGISTRY_FILENAME = "pretrained_saes.yaml"


def registry_entry(exported: Sequence[ExportedSAE], out: Path, repo_id: str) -> str:
    """A release for SAELens's ``pretrained_saes.yaml`` (a registry pull request), naming
    each SAE's folder in ``repo_id`` with its L0 and FVE on the first eval corpus scored.
    ``model`` is the TransformerLens name of the checkpoint the weights derive from; the
    comment above says which weights the SAEs were trained on."""
    import yaml

    def first(e: ExportedSAE, metric: str) -> float | None:
        return next((s.value for s in e.scores if s.metric == metric), None)

    saes = []
    for e in exported:
        folder = e.path.relative_to(out).as_posix() if e.path != out else "."
        entry: dict[str, Any] = {"id": e.provenance.sae_id, "path": folder}
        for key, metric in (("l0", "l0"), ("variance_explained", "fve")):
            if (value := first(e, metric)) is not None:
                entry[key] = round(value, 4)
        saes.append(entry)
    w = exported[0].provenance.weights
    release = re.sub(r"[^a-z0-9]+", "-", repo_id.split("/")[-1].lower()).strip("-")
    body = {release: {"repo_id": repo_id,
                      "model": (w.derived_from or exported[0].provenance.model_name
                                ).split("/")[-1],
                      "conversion_func": None, "saes": saes}}
    return (f"# sae-med {__version__}: a release entry for SAELens's pretrained_saes.yaml.\n"
            f"# The SAEs were trained on the activations of {w.describe()}.\n"
            + yaml.safe_dump(body, sort_keys=False))


def push_to_hub(folder: str | Path, repo_id: str, token: str | None = None,
                endpoint: str | None = None, private: bool = False) -> str:
    """Create ``repo_id`` (a model repo) if needed and upload ``folder``; returns the
    commit URL. Any failure (offline, no token, refused) is one :class:`ExportError`."""
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if token is None:
        raise ExportError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then "
                          f"push again (the folder {folder} is ready)")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                 commit_message=f"sae-med {__version__} export")
    except Exception as e:  # offline, refused, rate limited: one line that says what to do
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"could not push {folder} to the Hugging Face hub repo {repo_id} "
                          f"({type(e).__name__}: {reason}); check network access and the "
                          "token, or upload the folder by hand") from e
    return str(getattr(info, "commit_url", info))
