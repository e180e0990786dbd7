"""SAEs in other tools' formats: sae-lens, Gemma Scope, and any SAE by its spec."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sae_med.artifacts import atomic_path, write_json_atomic
from sae_med.layout import CFG_FILENAME, WEIGHTS_FILENAME
from sae_med.sae import factory
from sae_med.sae.base import BASE_TENSORS, LinearSAE, SAECheckpointError
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.sae.relu import ReLUSAE
from sae_med.sae.topk import TopKSAE

# --------------------------------------------------------------------------------------
# Interop: Gemma Scope params.npz and sae-lens
# --------------------------------------------------------------------------------------

def from_gemma_scope_npz(path: str | Path, bandwidth: float = 0.001,
                         device: torch.device | str = "cpu") -> JumpReLUSAE:
    """Load Gemma Scope's ``params.npz`` (W_enc (d_model, d_sae), W_dec (d_sae, d_model),
    b_enc, b_dec, threshold); Gemma Scope SAEs work on raw activations."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            t = {k: torch.from_numpy(np.asarray(npz[k], dtype=np.float32)) for k in npz.files}
    except (ValueError, OSError, TypeError, zipfile.BadZipFile) as err:
        raise SAECheckpointError(f"{path} is not a readable params.npz of float arrays "
                                 f"({type(err).__name__}); download it again") from None
    return JumpReLUSAE.from_tensors(t, {"bandwidth": bandwidth}, device, source=str(path))


GEMMA_SCOPE_2_PARAMS = "params.safetensors"
"""Gemma Scope 2's weights file (one folder per SAE on the hub, e.g.
``resid_post_all/layer_13_width_16k_l0_small/``): ``w_enc`` (d_model, d_sae), ``w_dec``
(d_sae, d_model), ``b_enc``, ``b_dec``, ``threshold``, on raw activations; a
``config.json`` beside it names the architecture and model (sae-lens's ``gemma_3`` loader
reads the same files)."""


def from_gemma_scope_2(path: str | Path, bandwidth: float = 0.001,
                       device: torch.device | str = "cpu") -> JumpReLUSAE:
    """Load a Gemma Scope 2 SAE from its ``params.safetensors`` (or the folder holding it)."""
    path = Path(path)
    file = path / GEMMA_SCOPE_2_PARAMS if path.is_dir() else path
    try:
        raw = load_file(str(file))
    except Exception as err:  # safetensors raises its own error types on a bad header
        raise SAECheckpointError(f"{file} is not a readable safetensors file "
                                 f"({type(err).__name__}); download it again") from None
    keys = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    if missing := [k for k in keys if k.lower() not in raw]:
        raise SAECheckpointError(f"{file} lacks {missing} of a Gemma Scope 2 SAE "
                                 f"(w_enc, w_dec, b_enc, b_dec, threshold)")
    t = {k: raw[k.lower()].float() for k in keys}
    return JumpReLUSAE.from_tensors(t, {"bandwidth": bandwidth}, device, source=str(file))


def save_gemma_scope_2(sae: JumpReLUSAE, folder: str | Path, model_name: str,
                       hook_layer: int) -> Path:
    """Write ``sae`` as a Gemma Scope 2 folder (``params.safetensors`` + ``config.json``,
    their key names and schema) on raw activations; returns the folder. What the offline
    rehearsal of a ``baselines:`` entry reads, and a way to hand our SAEs to Gemma Scope
    tooling."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = sae.folded()
    tensors = {"w_enc": f.W_enc, "w_dec": f.W_dec, "b_enc": f.b_enc, "b_dec": f.b_dec,
               "threshold": f.threshold}
    with atomic_path(folder / GEMMA_SCOPE_2_PARAMS) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                  str(tmp))
    write_json_atomic(folder / "config.json", {
        "architecture": "jump_relu", "model_name": model_name,
        "hf_hook_point_in": f"model.layers.{hook_layer}.output"})
    return folder


def to_sae_lens(sae: LinearSAE) -> Any:
    """The equivalent sae-lens inference SAE of any architecture, on raw activations
    (input scale folded in, ``apply_b_dec_to_input=False``; :func:`sae_med.sae.factory.
    to_sae_lens`)."""
    return factory.to_sae_lens(sae)


LENS_ARCHITECTURES = ("jumprelu", "standard", "topk")
"""The sae-lens architectures :func:`from_sae_lens` converts (sae-lens saves BatchTopK and
Matryoshka SAEs as ``jumprelu``)."""


def from_sae_lens(lens_sae: Any, bandwidth: float | None = None) -> LinearSAE:
    """Convert a sae-lens SAE (inference or training class) of :data:`LENS_ARCHITECTURES`:
    a :class:`JumpReLUSAE`, a ``ReLUSAE`` (``standard``) or a ``TopKSAE``.

    ``apply_b_dec_to_input`` is folded into b_enc (z = (x - b_dec) W_enc + b_enc), and
    TopK's ``rescale_acts_by_decoder_norm`` into the weights (top-k of z_i ||d_i||, decoded
    by d_i / ||d_i||); a non-trivial ``normalize_activations`` is refused. The JumpReLU
    bandwidth defaults to the training SAE's, else 0.001.
    """
    cfg = lens_sae.cfg
    arch = getattr(cfg, "architecture", lambda: None)()
    if arch not in LENS_ARCHITECTURES:
        raise ValueError(f"sae-lens architecture {arch!r} has no sae-med equivalent; "
                         f"one of {', '.join(LENS_ARCHITECTURES)}")
    if cfg.normalize_activations != "none":
        raise ValueError(f"sae-lens SAE uses normalize_activations="
                         f"{cfg.normalize_activations!r}; fold it first")
    with torch.no_grad():
        t = {k: getattr(lens_sae, k).detach().float().cpu() for k in BASE_TENSORS}
        if cfg.apply_b_dec_to_input:
            t["b_enc"] = t["b_enc"] - t["b_dec"] @ t["W_enc"]
        if getattr(cfg, "rescale_acts_by_decoder_norm", False):
            norms = t["W_dec"].norm(dim=1)
            t["W_enc"], t["b_enc"] = t["W_enc"] * norms, t["b_enc"] * norms
            t["W_dec"] = t["W_dec"] / norms[:, None]
    if arch == "standard":
        return ReLUSAE.from_tensors(t, {}, source="sae-lens SAE")
    if arch == "topk":
        return TopKSAE.from_tensors(t, {"k": int(cfg.k), "aux_coeff": getattr(
            cfg, "aux_loss_coefficient", 1.0)}, source="sae-lens SAE")
    if bandwidth is None:
        bandwidth = getattr(cfg, "jumprelu_bandwidth", 0.001)
    t["threshold"] = lens_sae.threshold.detach().float().cpu()
    return JumpReLUSAE.from_tensors(t, {"bandwidth": bandwidth}, source="sae-lens SAE")


SAE_SPEC_HELP = (
    "an SAE is given as: a folder saved by sae-med (cfg.json + sae.safetensors); a Gemma "
    "Scope params.npz (or a folder holding one); a Gemma Scope 2 params.safetensors (or a "
    "folder holding one); a folder saved by sae-lens "
    "(cfg.json + sae_weights.safetensors); or sae_lens:RELEASE/SAE_ID for a sae-lens "
    "pretrained release (hub path, needs internet), e.g. "
    "sae_lens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical")


def sae_format(spec: str | Path) -> str:
    """Which loader :func:`load_any_sae` uses for ``spec``: "sae_med", "gemma_scope",
    "gemma_scope_2", "sae_lens_disk" or "sae_lens_pretrained"; raises with
    :data:`SAE_SPEC_HELP` if none."""
    text = str(spec)
    if text.startswith("sae_lens:"):
        return "sae_lens_pretrained"
    path = Path(spec)
    if path.is_file() and path.suffix == ".npz":
        return "gemma_scope"
    if path.is_file() and path.name == GEMMA_SCOPE_2_PARAMS:
        return "gemma_scope_2"
    if path.is_dir():
        if (path / "params.npz").exists():
            return "gemma_scope"
        if (path / GEMMA_SCOPE_2_PARAMS).exists():
            return "gemma_scope_2"
        cfg = path / CFG_FILENAME
        if cfg.exists():
            try:
                arch = json.loads(cfg.read_text()).get("architecture")
            except json.JSONDecodeError as e:
                raise SAECheckpointError(f"{cfg} is not valid JSON: {e}") from e
            if arch in factory.CLASSES and (path / WEIGHTS_FILENAME).exists():
                return "sae_med"
            if (path / "sae_weights.safetensors").exists():
                return "sae_lens_disk"
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such file or folder; {SAE_SPEC_HELP}")
    raise SAECheckpointError(f"{spec}: not a recognised SAE; {SAE_SPEC_HELP}")


def load_any_sae(spec: str | Path, device: torch.device | str = "cpu") -> LinearSAE:
    """Load an SAE from any format of :func:`sae_format` on raw activations: a sae-med
    folder as the architecture its ``cfg.json`` names (:func:`sae_med.sae.factory.
    load_sae`), a sae-lens one as its architecture (:func:`from_sae_lens`), every other
    format as a :class:`JumpReLUSAE`."""
    kind = sae_format(spec)
    if kind == "sae_med":
        return factory.load_sae(spec, device=device)
    if kind == "gemma_scope":
        path = Path(spec)
        return from_gemma_scope_npz(path / "params.npz" if path.is_dir() else path,
                                    device=device)
    if kind == "gemma_scope_2":
        return from_gemma_scope_2(spec, device=device)
    # deferred: sae-lens is heavy (and optional here); only interop needs it
    from sae_lens import SAE

    if kind == "sae_lens_disk":
        return from_sae_lens(SAE.load_from_disk(str(spec))).to(device)
    release, _, sae_id = str(spec).removeprefix("sae_lens:").partition("/")
    if not release or not sae_id:
        raise ValueError(f"{spec}: expected sae_lens:RELEASE/SAE_ID")
    try:
        lens = SAE.from_pretrained(release, sae_id)
    except Exception as e:  # offline, unknown release/id: say what to do
        raise SAECheckpointError(
            f"could not load sae-lens release {release!r} id {sae_id!r} ({e}); this needs "
            "internet access to the Hugging Face hub, or download the SAE and pass its "
            "folder or params.npz") from e
    return from_sae_lens(lens).to(device)
