"""Export trained SAEs to other tools' formats and share them on the Hugging Face hub.

``sae_lens``: ``cfg.json`` + ``sae_weights.safetensors``, loaded by
``sae_lens.SAE.load_from_disk`` (or ``SAE.from_pretrained(REPO, SAE_ID)`` once pushed).
``gemma_scope``: ``params.npz`` as in google/gemma-scope-*, plus ``metadata.json``.
``saebench``: the sae-lens files, SAEBench's config for :mod:`sae_med.report.saebench`'s loader,
and SAEBench core results on the run's eval tokens.
Every architecture goes to sae-lens (so to SAEBench and Neuronpedia too); Gemma Scope's
format holds JumpReLU SAEs only (:func:`~sae_med.report.exported.export_formats`). Each
holds the SAE on raw activations (the training normalisation is folded into the weights)
and the exact weights it was trained on (:mod:`sae_med.lm.weights`); every export gets a
model card (``README.md``).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sae_med import __version__
from sae_med.artifacts import atomic_path, write_json_atomic, write_text_atomic
from sae_med.layout import SAES_DIR
from sae_med.report.exported import (
    ARCHITECTURE_NAMES,
    CARD_METRICS,
    FORMAT_FILES,
    FORMATS,
    LENS_AS_JUMPRELU,
    NEURONPEDIA_DIR,
    RUN_FORMATS,
    SAEBENCH_CFG,
    SAEBENCH_DIR,
    ExportedSAE,
    ExportError,
    ExportFormat,
    Provenance,
    RunInputs,
    Score,
    check_exportable,
    find_saes,
    read_provenance,
    read_scores,
    results_path,
)
from sae_med.report.neuronpedia import write_neuronpedia
from sae_med.report.saebench import CustomSAEConfig, write_core_results
from sae_med.sae.base import LinearSAE
from sae_med.sae.factory import load_sae
from sae_med.sae.io import to_sae_lens
from sae_med.sae.jumprelu import JumpReLUSAE

log = logging.getLogger(__name__)
CARD_FILENAME = "README.md"


# ---------------------------------------------------------------------------- writers

def _clear_other_formats(out: Path, fmt: ExportFormat) -> None:
    """Remove another format's files, so a folder never holds two SAEs that disagree."""
    for other, names in FORMAT_FILES.items():
        if other != fmt:
            for name in names:
                (out / name).unlink(missing_ok=True)


def write_sae_lens(sae: LinearSAE, prov: Provenance, out: Path) -> Path:
    """``cfg.json`` (metadata of :meth:`Provenance.metadata`) + ``sae_weights.safetensors``,
    written by sae-lens's own ``save_model`` so its loader reads them back. The sae-lens
    architecture is ``standard`` for ReLU, ``topk`` for TopK, ``jumprelu`` for JumpReLU and
    for BatchTopK and Matryoshka (:data:`~sae_med.report.exported.LENS_AS_JUMPRELU`)."""
    # deferred: sae-lens is heavy (and optional here); only interop needs it
    from sae_lens.saes.sae import SAEMetadata

    lens = to_sae_lens(sae)
    lens.cfg.metadata = SAEMetadata(**prov.metadata())
    lens.cfg.device = "cpu"
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        lens.save_model(tmp)
        for name in FORMAT_FILES["sae_lens"][::-1]:  # weights first: cfg.json marks complete
            os.replace(Path(tmp) / name, out / name)
    return out


def write_gemma_scope(sae: LinearSAE, prov: Provenance, out: Path) -> Path:
    """``params.npz`` (float32 W_enc, W_dec, b_enc, b_dec, threshold; Gemma Scope's names
    and shapes) + ``metadata.json``; a JumpReLU SAE only (others: :class:`ExportError`)."""
    check_exportable(prov, "gemma_scope")
    assert isinstance(sae, JumpReLUSAE)  # what check_exportable let through
    folded = sae.folded()
    params = {"W_enc": folded.W_enc, "W_dec": folded.W_dec, "b_enc": folded.b_enc,
              "b_dec": folded.b_dec, "threshold": folded.threshold}
    with atomic_path(out / "params.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: v.detach().float().cpu().numpy() for k, v in params.items()})
    write_json_atomic(out / "metadata.json", {"architecture": "jumprelu", "d_in": prov.d_in,
                                              "d_sae": prov.d_sae, **prov.metadata()})
    return out


def write_saebench(sae: LinearSAE, prov: Provenance, out: Path) -> Path:
    """The sae-lens files plus ``saebench_cfg.json`` (SAEBench's ``CustomSAEConfig``),
    which :meth:`sae_med.report.saebench.SAEBenchSAE.load` reads."""

    write_sae_lens(sae, prov, out)
    cfg = CustomSAEConfig(
        model_name=prov.model_name, d_in=prov.d_in, d_sae=prov.d_sae,
        hook_layer=int(prov.hook_name.split(".")[1]), hook_name=prov.hook_name,
        context_size=prov.context_size, dataset_path=f"sae-med:{prov.train_corpus}",
        training_tokens=prov.training_tokens or -100_000, architecture=prov.architecture)
    write_json_atomic(out / SAEBENCH_CFG, cfg.to_dict())
    return out


WRITERS = {"sae_lens": write_sae_lens, "gemma_scope": write_gemma_scope,
           "saebench": write_saebench, "neuronpedia": write_sae_lens}


def export_saes(source: str | Path, fmt: ExportFormat, out: str | Path,
                inputs: RunInputs | None = None) -> list[ExportedSAE]:
    """Export one SAE folder into ``out``, or every SAE of a run folder into
    ``out/{sae_id}``, in format ``fmt``; then write the model card ``out/README.md``.
    The run-level formats (``saebench``, ``neuronpedia``) also read ``inputs``: the eval
    caches and model lens the orchestrator hands in
    (:func:`sae_med.experiment.export_inputs`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if fmt in RUN_FORMATS and inputs is None:
        raise ExportError(f"--format {fmt} reads the run's eval caches: export through "
                          "sae_med.experiment.export_inputs (as `sae-med export` does)")
    source, out = Path(source), Path(out)
    saes = find_saes(source)
    single = not (source / SAES_DIR).is_dir()
    scores_from = results_path(source)
    provs = {sae_id: read_provenance(sae_dir, sae_id) for sae_id, sae_dir in saes.items()}
    for prov in provs.values():  # refuse before writing anything
        check_exportable(prov, fmt)
    exported = []
    for sae_id, sae_dir in saes.items():
        prov = provs[sae_id]
        target = out if single else out / sae_id
        target.mkdir(parents=True, exist_ok=True)
        _clear_other_formats(target, fmt)
        WRITERS[fmt](load_sae(sae_dir), prov, target)
        exported.append(ExportedSAE(prov, target, read_scores(scores_from, sae_id)))
        log.info("exported %s -> %s (%s)", sae_id, target, fmt)
    if fmt == "saebench" and inputs is not None:
        write_core_results(exported, scores_from, out, inputs)
    if fmt == "neuronpedia" and inputs is not None:
        write_neuronpedia(exported, saes, out, inputs)
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
        return ("```python\nfrom sae_med.report.saebench import SAEBenchSAE\n\n"
                f'sae = SAEBenchSAE.load("{example}")  # SAEBench custom-SAE interface\n'
                "```\n\nSAEBench core results (its eval_output schema, on sae-med's eval "
                f"tokens): `{SAEBENCH_DIR}/EVAL_CORPUS/core/`.\n")
    return ("```python\nimport numpy as np\n\n"
            f'params = np.load("{example}/params.npz")  # W_enc, W_dec, b_enc, b_dec, '
            "threshold\n```\n\nor score it with sae-med: "
            f"`sae-med evaluate CONFIG --sae {example}`.\n")


def _as_jumprelu_note(archs: Sequence[str], lens: bool) -> list[str]:
    """What a BatchTopK SAE becomes in sae-lens, where the card has sae-lens files."""
    held = [ARCHITECTURE_NAMES[a] for a in archs if a in LENS_AS_JUMPRELU]
    if not (lens and held):
        return []
    return [f"{' and '.join(held)} SAEs load in sae-lens as JumpReLU SAEs with their "
            "learnt inference threshold on every latent (as sae-lens saves its own): the "
            "function sae-med scores them by.", ""]


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
    archs = sorted({p.architecture for p in provs})
    tags = ["sparse-autoencoder", *(a.replace("_", "-") for a in archs), "sae-med",
            {"gemma_scope": "gemma-scope-format"}.get(fmt, fmt)]
    front = (["---"] + (["library_name: saelens"] if lens else [])
             + ([f"base_model: {bases[0]}"] if len(bases) == 1 else
                ["base_model:", *[f"- {b}" for b in bases]] if bases else [])
             + ["tags:"] + [f"- {t}" for t in tags] + ["---", ""])
    names = " and ".join(ARCHITECTURE_NAMES.get(a, a) for a in archs)
    lines = [f"# {names} SAEs on {', '.join(models)} ({', '.join(hooks)})", "",
             f"Trained with sae-med {__version__} (domain-specific vs broad sparse "
             f"autoencoders). Format: `{fmt}`. Inputs are raw activations at the hook: the "
             "training normalisation (a scalar s with E‖s·x‖² = 1) is folded into the "
             "weights.", "", "## Loading", "", _loading(fmt, folders, repo_id),
             *_as_jumprelu_note(archs, lens),
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
                  repo_id: str, inputs: RunInputs | None = None) -> list[Path]:
    """Export into ``out`` with a card that names ``repo_id`` (``inputs`` as for
    :func:`export_saes`); returns the files :func:`push_to_hub` would upload (relative to
    ``out``), without touching the network."""
    out = Path(out)
    exported = export_saes(source, fmt, out, inputs)
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
    # deferred: huggingface_hub is needed only to push to the hub
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
