"""Which class is each ``sae.architecture``: build one from the config, load a saved one,
export one to sae-lens, whatever its architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae_med.config import SAEConfig
from sae_med.sae import jumprelu, relu, topk
from sae_med.sae.base import LinearSAE, SAECheckpointError, read_checkpoint_cfg
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.sae.relu import ReLUSAE
from sae_med.sae.topk import BatchTopKSAE, MatryoshkaSAE, TopKSAE

AnySAE = JumpReLUSAE | LinearSAE

CLASSES: dict[str, type[JumpReLUSAE] | type[LinearSAE]] = {
    "jumprelu": JumpReLUSAE, "relu": ReLUSAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE,
    "matryoshka_batchtopk": MatryoshkaSAE}


def matryoshka_sizes(sc: SAEConfig) -> tuple[int, ...]:
    """The inner prefix sizes of ``sc.matryoshka_prefixes`` (fractions) at ``sc.width``."""
    return tuple(round(f * sc.width) for f in sc.matryoshka_prefixes)


def build_sae(sc: SAEConfig, d_model: int, l0_target: float, input_scale: float = 1.0,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
              generator: torch.Generator | None = None) -> AnySAE:
    """A fresh SAE of ``sc.architecture`` at width ``sc.width``. ``l0_target`` is k for the
    TopK family; the JumpReLU and ReLU SAEs reach theirs through the trainer's sparsity
    term, so it does not enter their construction."""
    common = {"input_scale": input_scale, "device": device, "dtype": dtype,
              "generator": generator}
    arch = sc.architecture
    if arch == "jumprelu":
        return JumpReLUSAE(d_model, sc.width, bandwidth=sc.bandwidth,
                           init_threshold=sc.init_threshold, **common)
    if arch == "relu":
        return ReLUSAE(d_model, sc.width, **common)
    if arch == "matryoshka_batchtopk":
        return MatryoshkaSAE(d_model, sc.width, l0_target, matryoshka_sizes(sc), **common)
    if arch == "topk":
        return TopKSAE(d_model, sc.width, l0_target, **common)
    if arch == "batchtopk":
        return BatchTopKSAE(d_model, sc.width, l0_target, **common)
    raise ValueError(f"unknown SAE architecture {arch!r}; one of {', '.join(CLASSES)}")


def load_sae(directory: str | Path, device: torch.device | str = "cpu") -> AnySAE:
    """Load a folder written by any architecture's ``save`` (its ``cfg.json`` says which)."""
    cfg, _ = read_checkpoint_cfg(directory)
    cls = CLASSES.get(cfg.get("architecture", ""))
    if cls is None:
        raise SAECheckpointError(f"{directory}: unknown architecture "
                                 f"{cfg.get('architecture')!r}; one of {', '.join(CLASSES)}")
    return cls.load(directory, device=device)


def to_sae_lens(sae: AnySAE) -> Any:
    """The equivalent sae-lens inference SAE of any architecture, on raw activations."""
    if isinstance(sae, JumpReLUSAE):
        return jumprelu.to_sae_lens(sae)
    if isinstance(sae, ReLUSAE):
        return relu.to_sae_lens(sae)
    if isinstance(sae, TopKSAE):
        return topk.to_sae_lens(sae)
    raise TypeError(f"no sae-lens export for {type(sae).__name__}")
