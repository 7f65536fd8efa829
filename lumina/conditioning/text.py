"""Text encoders (transformers): prompts -> ``(feats, mask)`` context tokens for the model's cross-attention.

:class:`TextEncoder` wraps one tokenizer + model (Lumina-Next: Gemma-2B, max length 256, ``hidden_states[-2]``).
Everything loads from LOCAL directories only (``local_files_only=True``); transformers is imported lazily.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from .._paths import check_model_dir

__all__ = ["TextEncoder"]

PathLike = Union[str, os.PathLike]
DeviceLike = Union[str, torch.device, None]

# Files a tokenizer directory may hold; one of them must exist (fast tokenizers, SentencePiece, WordPiece, BPE).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.txt",
                    "vocab.json")


class TextEncoder(torch.nn.Module):
    """A transformers tokenizer + base model that turns prompts into ``(feats, mask)``.

    ``feats = hidden_states[layer]`` of the model (B, L, D) and ``mask`` (B, L) bool, True on real tokens, right
    padded (valid tokens first). ``L`` is the longest tokenized prompt rounded up to a multiple of 8, capped at
    ``max_length`` (so ``L`` is a multiple of 8 whenever ``max_length`` is). Prompts longer than ``max_length``
    tokens (special tokens included) are truncated.

    Decoder-only models (Gemma, Llama) and encoders (BERT, MiniLM) are run as given; for encoder-decoder models
    (T5) only the encoder is run. The model is put in eval mode. The tokenizer is a plain attribute, the model a
    submodule (``.to(device)`` moves it).
    """

    def __init__(self, tokenizer: Any, model: torch.nn.Module, layer: int = -2, max_length: int = 256):
        """Wrap ``tokenizer`` (a transformers tokenizer) and ``model`` (a transformers base model, e.g. from
        ``AutoModel``). ``layer`` indexes ``hidden_states`` (index 0 = the embeddings, -1 = the last layer);
        ``max_length`` >= 1 is the token budget per prompt."""
        super().__init__()
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"`max_length` must be an int >= 1, got {max_length!r}")
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ValueError(f"`layer` must be an int (an index into hidden_states), got {layer!r}")
        n_layers = getattr(model.config, "num_hidden_layers", None)
        if n_layers is not None and not -(n_layers + 1) <= layer <= n_layers:
            raise ValueError(f"`layer` = {layer} is out of range for a model with {n_layers} layers "
                             f"({n_layers + 1} hidden states: indices {-(n_layers + 1)} .. {n_layers})")
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.layer = layer
        self.max_length = max_length
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            # e.g. Llama / GPT-2 style tokenizers: pad with EOS (padded positions are masked out anyway).
            fallback = tokenizer.eos_token or tokenizer.unk_token
            if fallback is None:
                raise ValueError("the tokenizer has no pad, eos or unk token to pad with")
            tokenizer.pad_token = fallback

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        dtype: Optional[torch.dtype] = None,
        device: DeviceLike = None,
        layer: int = -2,
        max_length: int = 256,
        tokenizer_path: Optional[PathLike] = None,
    ) -> "TextEncoder":
        """Load ``AutoTokenizer`` and ``AutoModel`` from the local directory ``path`` (``local_files_only=True``).

        ``dtype``: the model's dtype (``None``: the dtype saved in its config, transformers 5's ``"auto"``; e.g.
        bfloat16 for gemma-2b). ``device``: where to put the model (``None``: CPU). Raises ``FileNotFoundError``
        naming ``path`` when it is missing, is not a directory, or lacks config.json or any tokenizer file.
        ``tokenizer_path``: a separate tokenizer directory (a diffusers pipeline's ``tokenizer/``; default ``path``).
        """
        p = check_model_dir(path, "text encoder")
        tp = Path(tokenizer_path) if tokenizer_path is not None else p
        if not any((tp / f).is_file() for f in _TOKENIZER_FILES):
            raise FileNotFoundError(f"tokenizer directory {str(tp)!r} has no tokenizer files (expected one of "
                                    f"{', '.join(_TOKENIZER_FILES)})")
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tp, local_files_only=True)
        kwargs = {} if dtype is None else {"dtype": dtype}
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise in a generation run
        try:
            model = AutoModel.from_pretrained(p, local_files_only=True, **kwargs)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if device is not None:
            model = model.to(device)
        return cls(tokenizer, model, layer=layer, max_length=max_length)

    def save_pretrained(self, path: PathLike) -> Path:
        """Save the tokenizer and the model to the directory ``path`` (created if needed) so that
        :meth:`from_pretrained` loads them back; returns ``path``. ``layer`` and ``max_length`` are not saved."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(p)
        self.tokenizer.save_pretrained(p)
        return p

    @property
    def dim(self) -> int:
        """Feature size D (the model's ``hidden_size``)."""
        config = self.model.config
        size = getattr(config, "hidden_size", None)
        if size is None and hasattr(config, "get_text_config"):
            size = getattr(config.get_text_config(), "hidden_size", None)
        if size is None:
            raise AttributeError(f"{type(config).__name__} has no hidden_size")
        return int(size)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's (floating) parameters, and so of the features."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def tokenize(self, prompts: Union[str, Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both (B, L) int64 on the model's device, right padded, as
        :meth:`encode` feeds them to the model (including the empty-prompt rule there)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts or not all(isinstance(s, str) for s in prompts):
            raise ValueError("`prompts` must be a string or a non-empty list of strings")
        tok = self.tokenizer
        tok.padding_side = "right"
        # transformers refuses pad_to_multiple_of with a max_length that is not a multiple of it; then the
        # rounding (capped at max_length) is done below.
        multiple = 8 if self.max_length % 8 == 0 else None
        enc = tok(prompts, padding=True, pad_to_multiple_of=multiple, truncation=True, max_length=self.max_length,
                  return_tensors="pt")
        ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
        # L = longest rounded up to a multiple of 8, capped at max_length, at least 1 (room for the empty rule).
        length = min(max(-(-ids.shape[1] // 8) * 8, 8), self.max_length)
        if ids.shape[1] < length:
            extra = length - ids.shape[1]
            ids = torch.cat([ids, ids.new_full((ids.shape[0], extra), tok.pad_token_id)], dim=1)
            mask = torch.cat([mask, mask.new_zeros((mask.shape[0], extra))], dim=1)
        ids, mask = ids[:, :length], mask[:, :length]
        empty = mask.sum(1) == 0
        if empty.any():
            # A prompt with zero tokens (a tokenizer that adds no BOS, given ""): its first position becomes one
            # valid BOS token (or pad when there is no BOS), so the model has something to attend to and mean
            # pooling never divides by zero.
            first = tok.bos_token_id if tok.bos_token_id is not None else tok.pad_token_id
            ids[empty, 0] = first
            mask[empty, 0] = 1
        return ids.to(self.device), mask.to(self.device)

    def encode(self, prompts: Union[str, Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``prompts`` (a string or a list of strings) to ``(feats, mask)``: feats (B, L, D) =
        ``hidden_states[layer]`` in the model's dtype, mask (B, L) bool (True = valid token, right padded), both on
        the model's device. Every row has at least one valid token: ``""`` gives the tokenizer's specials (Gemma:
        ``<bos>``), or one BOS (pad if no BOS) marked valid if the tokenizer gives nothing. Features at padded
        positions are whatever the model computes there; use ``mask``. Runs under ``torch.no_grad()``."""
        ids, mask = self.tokenize(prompts)
        model = self.model
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states
        if hidden is None:
            raise RuntimeError(f"{type(model).__name__} returned no hidden_states")
        try:
            feats = hidden[self.layer]
        except IndexError:
            raise ValueError(f"`layer` = {self.layer} is out of range: the model returned {len(hidden)} hidden "
                             f"states") from None
        if feats is None:
            raise RuntimeError(f"{type(model).__name__} did not return hidden state {self.layer}")
        return feats, mask.bool()

    def forward(self, prompts: Union[str, Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`encode`."""
        return self.encode(prompts)
