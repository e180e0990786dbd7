"""The language model behind every forward pass in sae-med.

:class:`LanguageModel` owns a Hugging Face causal LM and its tokenizer and offers the few
operations the package needs: tokenise documents as the activation cache does, read the
residual stream after a block (stopping the forward there), run to the final states with
an edit at that block, and unembed (with the logit soft-cap where the model has one);
the spliced-loss scoring above it is :mod:`sae_med.measure.spliced`. TransformerLens is
optional: it is imported only by :meth:`LanguageModel.transformer_lens`, for users who
want its hooks and for the tests' cross-check.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_med.config import ConfigError
from sae_med.lm.files import tl_model_name
from sae_med.runtime import DtypeChoice, fp32_linear

Edit = Callable[[Tensor], Tensor]
"""Maps the residual ``(batch, pos, d_model)`` after a block to its replacement."""

_BLOCK_PATHS = ("model.layers", "model.language_model.layers", "transformer.h",
                "gpt_neox.layers", "model.decoder.layers")


class TokenBatch(NamedTuple):
    """Documents tokenised as the activation cache does (all ``(batch, pos)``)."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    keep: Bool[Tensor, "batch pos"]
    """Positions a cache keeps and an SAE is spliced at: attended, and not a special
    token (BOS/EOS/pad) when the special-token policy excludes them."""

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in self))


class CleanRun(NamedTuple):
    """An unedited forward (:meth:`LanguageModel.clean_run`): what the edited reruns of the
    same batch start from."""

    block_output: Any
    """The output of the hooked block, as the block returned it (a tensor or a tuple whose
    first element is the residual)."""
    final: Float[Tensor, "batch pos d_model"]
    """Final-norm states."""


def decoder_layers(hf: Any) -> Any:
    """The list of transformer blocks of an HF causal LM (``model.layers`` and kin)."""
    for path in _BLOCK_PATHS:
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"cannot find the decoder blocks of {type(hf).__name__}; "
                     f"looked for {', '.join(_BLOCK_PATHS)}")


def special_token_ids(tokenizer: Any) -> list[int]:
    """BOS, EOS and pad ids of ``tokenizer`` (the tokens a cache never keeps)."""
    ids: set[int] = set()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, list | tuple):
            ids.update(int(i) for i in v)
    return sorted(ids)


class _StopForward(Exception):
    """Raised from a block's hook to end the forward there."""


def _replace_output(output: Any, new: Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


class LanguageModel:
    """An HF causal LM (eval mode; fp32 or ``model.dtype``) with its tokenizer and the
    operations sae-med needs. Blocks are numbered as TransformerLens numbers them: the
    residual "after block L" is TransformerLens's ``blocks.{L}.hook_resid_post``, the
    output of HF decoder layer L."""

    def __init__(self, hf: Any, tokenizer: Any, name: str, weights_hash: str,
                 dtype_choice: DtypeChoice | None = None) -> None:
        self._hf = hf.eval()
        self.tokenizer = tokenizer
        """The HF tokenizer (for decoding token ids)."""
        self.name = name
        """The name it was loaded by (``embedded:gemma-3-270m`` or a hub id / folder)."""
        self.weights_hash = weights_hash
        """Identity of the weights, used in every artefact's cache key."""
        self.dtype_choice = dtype_choice or DtypeChoice(
            str(next(hf.parameters()).dtype).removeprefix("torch."), "as loaded")
        """The forwards' dtype and why (``model.dtype``, resolved)."""
        self.special_ids = special_token_ids(tokenizer)
        self._blocks = decoder_layers(hf)
        self._tl: Any = None

    # ---------------------------------------------------------------- shape and place
    @property
    def hf_model(self) -> Any:
        """The underlying ``transformers`` model, for interop with other tools (the package
        itself goes through this class's methods only)."""
        return self._hf

    @property
    def n_layers(self) -> int:
        return len(self._blocks)

    @property
    def d_model(self) -> int:
        return int(self._hf.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return next(self._hf.parameters()).device

    @property
    def softcap(self) -> float | None:
        """Gemma-2's final logit soft-cap (None when the model has none)."""
        return getattr(self._hf.config, "final_logit_softcapping", None) or None

    def check_layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise ConfigError(f"config field 'model.hook_layer': {layer} is out of range; "
                             f"{self.name} has blocks 0..{self.n_layers - 1}")
        return layer

    # ---------------------------------------------------------------- tokenisation
    def tokenize(self, texts: list[str], ctx_len: int, exclude_special: bool = True
                 ) -> TokenBatch:
        """Each text on its own with BOS, truncated to ``ctx_len``, right-padded; ``keep``
        marks attended positions (minus special tokens when ``exclude_special``)."""
        extra = int(self._prepend_bos)
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True,
                             max_length=ctx_len - extra, padding=True, padding_side="right",
                             return_tensors="pt")
        return self._batch(enc["input_ids"], enc["attention_mask"], exclude_special)

    def tokenize_text(self, text: str) -> TokenBatch:
        """One text with BOS, not truncated, special tokens excluded from ``keep``."""
        enc = self.tokenizer(text, return_tensors="pt")
        return self._batch(enc["input_ids"], enc["attention_mask"], True)

    @cached_property
    def _prepend_bos(self) -> bool:
        """Whether BOS must be added by hand: some tokenizers (SmolLM2's) add none, and
        without it the first word becomes the attention sink with a huge residual norm."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is None:
            return False
        return self.tokenizer("a", add_special_tokens=True)["input_ids"][0] != bos

    def _batch(self, tokens: Tensor, attention_mask: Tensor, exclude_special: bool
               ) -> TokenBatch:
        if self._prepend_bos:
            ones = torch.ones_like(tokens[:, :1])
            tokens = torch.cat([ones * self.tokenizer.bos_token_id, tokens], 1)
            attention_mask = torch.cat([ones, attention_mask], 1)
        keep = attention_mask.bool()
        if exclude_special and self.special_ids:
            keep &= ~torch.isin(tokens, torch.tensor(self.special_ids))
        return TokenBatch(tokens, attention_mask, keep)

    # ---------------------------------------------------------------- forward passes
    @torch.no_grad()
    def resid(self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"],
              layer: int) -> Float[Tensor, "batch pos d_model"]:
        """Residual stream after block ``layer``, in fp32 whatever the model's dtype; no
        later block nor the unembedding runs (an exception from the block's hook ends the
        forward)."""
        captured: list[Tensor] = []

        def grab(_module: Any, _inputs: Any, output: Any) -> None:
            captured.append(_first(output))
            raise _StopForward

        handle = self._blocks[self.check_layer(layer)].register_forward_hook(grab)
        try:
            self._hf(input_ids=tokens, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0].float()

    @torch.no_grad()
    def final_states(self, tokens: Int[Tensor, "batch pos"],
                     attention_mask: Int[Tensor, "batch pos"], layer: int, edit: Edit
                     ) -> Float[Tensor, "batch pos d_model"]:
        """Final-norm residual stream (what the unembedding reads) with ``edit`` applied to
        the residual after block ``layer``."""

        def hook(_module: Any, _inputs: Any, output: Any) -> Any:
            return _replace_output(output, edit(_first(output)))

        return self._final(tokens, attention_mask, layer, hook)

    def _final(self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"],
               layer: int | None = None, hook: Callable[..., Any] | None = None
               ) -> Float[Tensor, "batch pos d_model"]:
        """Final-norm states of one forward, with ``hook`` (a forward hook) on block
        ``layer`` when given."""
        handle = (self._blocks[self.check_layer(layer)].register_forward_hook(hook)
                  if hook is not None and layer is not None else None)
        try:
            return self._hf.base_model(input_ids=tokens, attention_mask=attention_mask,
                                       use_cache=False).last_hidden_state
        finally:
            if handle is not None:
                handle.remove()

    @torch.no_grad()
    def clean_run(self, tokens: Int[Tensor, "batch pos"],
                  attention_mask: Int[Tensor, "batch pos"], layer: int) -> CleanRun:
        """The unedited forward, keeping what :meth:`final_states_from` needs."""
        outputs: list[Any] = []

        def grab(_module: Any, _inputs: Any, output: Any) -> None:
            outputs.append(output)

        final = self._final(tokens, attention_mask, layer, grab)
        return CleanRun(outputs[0], final)

    @torch.no_grad()
    def final_states_from(self, clean: CleanRun, tokens: Int[Tensor, "batch pos"],
                          attention_mask: Int[Tensor, "batch pos"], layer: int, edit: Edit
                          ) -> Float[Tensor, "batch pos d_model"]:
        """:meth:`final_states` of the same batch, computed from ``clean`` (its
        :meth:`clean_run`): blocks 0..``layer`` are not run again. Each of them is stood in
        for by a stub for this one call (the earlier ones pass their input on, block
        ``layer`` returns the edited clean residual), so the embedding, the masks, the later
        blocks and the final norm run exactly as in a full forward, on any architecture."""
        new = _replace_output(clean.block_output, edit(_first(clean.block_output)))

        def passthrough(*args: Any, **kwargs: Any) -> Any:
            hidden = args[0] if args else kwargs["hidden_states"]
            return _replace_output(clean.block_output, hidden)

        stubs = self._blocks[:layer + 1]
        # a block may already have an instance-level forward (accelerate's hooks set one)
        saved = [vars(block).get("forward") for block in stubs]
        for j, block in enumerate(stubs):
            block.forward = (lambda *a, **k: new) if j == layer else passthrough
        try:
            return self._final(tokens, attention_mask)
        finally:
            for block, forward in zip(stubs, saved, strict=True):
                if forward is None:
                    del block.forward  # back to the class's forward
                else:
                    block.forward = forward

    def unembed(self, h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_vocab"]:
        """Logits of final-norm states, soft-capped where the model caps them."""
        return self._capped(self._hf.get_output_embeddings()(h))

    def _capped(self, logits: Float[Tensor, "n d_vocab"]) -> Float[Tensor, "n d_vocab"]:
        cap = self.softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def log_probs(self, raw: Float[Tensor, "n d_vocab"]) -> Float[Tensor, "n d_vocab"]:
        """fp32 log-probabilities of raw (uncapped) logits rows."""
        return F.log_softmax(self._capped(raw).float(), dim=-1)

    def logits(self, h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_vocab"]:
        """Raw (uncapped) logits; fp32 products through this machine's faster kernel."""
        head = self._hf.get_output_embeddings()
        z = fp32_linear(h, head.weight) if head.weight.dtype == h.dtype == torch.float32 \
            else F.linear(h, head.weight)
        return z if head.bias is None else z + head.bias

    @property
    def linear_logits(self) -> bool:
        """Whether the logits are linear in fp32 (no soft-cap, an fp32 unembedding), so
        log-probabilities follow from a log-sum-exp alone."""
        return (self.softcap is None
                and self._hf.get_output_embeddings().weight.dtype == torch.float32)

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """The unembedding matrix (detached, fp32, on the model's device)."""
        return self._hf.get_output_embeddings().weight.detach().T.float()

    # ---------------------------------------------------------------- optional TL
    def transformer_lens(self) -> Any:
        """A TransformerLens ``HookedTransformer`` sharing this model's weights (built on
        first use; TransformerLens is imported only here)."""
        if self._tl is None:
            # deferred: TransformerLens is heavy and optional; only its hooks need it
            from transformer_lens import HookedTransformer

            self._tl = HookedTransformer.from_pretrained_no_processing(
                self._tl_name(), hf_model=self._hf, tokenizer=self.tokenizer,
                device=str(self.device), dtype=torch.float32).eval()
        return self._tl

    def _tl_name(self) -> str:
        return tl_model_name(self.name)

    def to(self, device: torch.device | str) -> LanguageModel:
        self._hf.to(device)
        return self
