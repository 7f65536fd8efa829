"""Text encoders (transformers) and latent codecs (diffusers VAEs, pixel space) for the pipelines.

* :class:`TextEncoder`: a tokenizer + a transformers base model; ``encode(prompts) -> (feats, mask)`` with right
  padding and the features of one hidden layer (Lumina-Next: Gemma-2B, max length 256, ``hidden_states[-2]``).
* :class:`LatentCodec`: the image <-> latent mapping; :class:`VAECodec` (a ``diffusers.AutoencoderKL``, always run
  in float32: SDXL VAE, scaling 0.13025, shift 0 for Lumina-Next) and :class:`PixelCodec` (identity, for
  pixel-space models).
* :func:`to_pil`: float images in [0, 1] to 8-bit RGB PIL images.

Everything loads from LOCAL directories only (``local_files_only=True``): nothing here downloads. transformers and
diffusers are imported lazily, so ``import lumina.pipelines`` stays cheap.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import torch

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image
    from diffusers import AutoencoderKL

__all__ = ["TextEncoder", "LatentCodec", "VAECodec", "PixelCodec", "to_pil"]

PathLike = Union[str, os.PathLike]
DeviceLike = Union[str, torch.device, None]

# Files a tokenizer directory may hold; one of them must exist (fast tokenizers, SentencePiece, WordPiece, BPE).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.txt",
                    "vocab.json")


def _check_dir(path: PathLike, what: str) -> Path:
    """``path`` as a ``Path``; ``FileNotFoundError`` naming it (and ``what``) unless it is a directory holding a
    ``config.json``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} directory {str(p)!r} does not exist (expected a local directory saved with "
                                f"save_pretrained, holding config.json and the weights)")
    if not p.is_dir():
        raise FileNotFoundError(f"{what} path {str(p)!r} is not a directory (expected a local directory saved with "
                                f"save_pretrained, holding config.json and the weights)")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{what} directory {str(p)!r} has no config.json (expected a local directory saved "
                                f"with save_pretrained)")
    return p


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
        p = _check_dir(path, "text encoder")
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


class LatentCodec:
    """The image <-> latent mapping of a pipeline.

    ``decode(latents) -> images`` float32 in [0, 1], (B, C, H * downscale, W * downscale); ``encode(images in
    [0, 1]) -> latents`` (B, latent_channels, H / downscale, W / downscale); ``to(device)`` moves it and returns
    it; ``latent_channels`` and ``downscale`` describe the latent grid.
    """

    latent_channels: int
    downscale: int

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_channels, h, w) -> images (B, C, h * downscale, w * downscale) in [0, 1]."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
               sample: bool = True) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> latents (B, latent_channels, H / downscale, W / downscale)."""
        raise NotImplementedError

    def to(self, device: DeviceLike) -> "LatentCodec":
        """Move to ``device``; returns ``self``."""
        return self

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(latent_channels, height // downscale, width // downscale)``; ``ValueError`` unless both sizes are
        positive multiples of ``downscale``."""
        d = self.downscale
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v < d or v % d:
                raise ValueError(f"`{name}` must be a positive multiple of {d}, got {v!r}")
        return self.latent_channels, height // d, width // d


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"`{name}` must be a 4-D tensor (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


class VAECodec(LatentCodec):
    """A ``diffusers.AutoencoderKL`` as a codec, kept and run in float32 (whatever the dtype of the latents).

    ``decode``: ``images = vae.decode(latents / scaling_factor + shift_factor).sample`` mapped from [-1, 1] to
    [0, 1] and clamped. ``encode``: ``(z - shift_factor) * scaling_factor`` with ``z`` sampled from (or the mode
    of) the latent distribution of ``2 * images - 1``. Both run under ``torch.no_grad()`` and return float32.
    """

    def __init__(self, vae: "AutoencoderKL"):
        """Wrap ``vae`` (converted in place to float32 and eval mode, gradients off)."""
        if any(p.dtype != torch.float32 for p in vae.parameters()):
            vae = vae.float()  # (diffusers' to(dtype) logs a warning even when casting to float32)
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor if getattr(cfg, "scaling_factor", None) is not None else 1.0)
        shift = getattr(cfg, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.latent_channels = int(cfg.latent_channels)
        self.downscale = 2 ** (len(cfg.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, path: PathLike, device: DeviceLike = None) -> "VAECodec":
        """Load ``AutoencoderKL`` from the local directory ``path`` (``local_files_only=True``) in float32, on
        ``device`` (``None``: CPU). ``FileNotFoundError`` naming ``path`` when it is missing or has no
        config.json."""
        p = _check_dir(path, "VAE")
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(p, local_files_only=True, torch_dtype=torch.float32,
                                            low_cpu_mem_usage=False)  # True needs accelerate
        codec = cls(vae)
        return codec.to(device) if device is not None else codec

    @property
    def device(self) -> torch.device:
        """Device of the VAE's parameters."""
        return next(self.vae.parameters()).device

    def to(self, device: DeviceLike) -> "VAECodec":
        """Move the VAE to ``device`` (staying float32); returns ``self``."""
        self.vae.to(device)  # parameters are float32 already (see __init__)
        return self

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_channels, h, w), any float dtype -> float32 images (B, 3, h * downscale,
        w * downscale) in [0, 1], on the VAE's device."""
        _check_images(latents, "latents")
        if latents.shape[1] != self.latent_channels:
            raise ValueError(f"`latents` must have {self.latent_channels} channels, got shape {tuple(latents.shape)}")
        z = latents.to(device=self.device, dtype=torch.float32)
        with torch.no_grad():
            x = self.vae.decode(z / self.scaling_factor + self.shift_factor).sample
        return (x / 2 + 0.5).clamp(0, 1)

    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
               sample: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> float32 latents (B, latent_channels, H / downscale, W / downscale):
        ``(z - shift_factor) * scaling_factor``, ``z`` drawn with ``generator`` (``sample=True``) or the mode of
        the latent distribution (``sample=False``)."""
        _check_images(images, "images")
        x = images.to(device=self.device, dtype=torch.float32) * 2 - 1
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            z = dist.sample(generator=generator) if sample else dist.mode()
        return (z - self.shift_factor) * self.scaling_factor


class PixelCodec(LatentCodec):
    """Identity codec for pixel-space models: downscale 1, ``latent_channels = channels``; the model's space is
    [-1, 1]. ``decode`` maps [-1, 1] -> [0, 1] (clamped), ``encode`` maps [0, 1] -> [-1, 1]; both return float32 on
    the input's device (or the device given to ``to``)."""

    def __init__(self, channels: int = 3):
        """``channels``: image (and latent) channels, >= 1."""
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"`channels` must be an int >= 1, got {channels!r}")
        self.latent_channels = channels
        self.downscale = 1
        self._device: Optional[torch.device] = None

    def to(self, device: DeviceLike) -> "PixelCodec":
        """Outputs go to ``device`` from now on (``None``: stay where the input is); returns ``self``."""
        self._device = torch.device(device) if device is not None else None
        return self

    def _prep(self, x: torch.Tensor, name: str) -> torch.Tensor:
        _check_images(x, name)
        if x.shape[1] != self.latent_channels:
            raise ValueError(f"`{name}` must have {self.latent_channels} channels, got shape {tuple(x.shape)}")
        return x.to(device=x.device if self._device is None else self._device, dtype=torch.float32)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [0, 1]: ``(x / 2 + 0.5).clamp(0, 1)`` in float32."""
        return (self._prep(latents, "latents") / 2 + 0.5).clamp(0, 1)

    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
               sample: bool = True) -> torch.Tensor:
        """[0, 1] -> [-1, 1]: ``2 * x - 1`` in float32 (``generator`` and ``sample`` are ignored)."""
        return self._prep(images, "images") * 2 - 1


def to_pil(images: torch.Tensor) -> list["PIL.Image.Image"]:
    """Float images (B, 3 or 1, H, W) in [0, 1] -> a list of B 8-bit RGB PIL images (W x H).

    Values are clamped to [0, 1], scaled by 255 and rounded to nearest (ties to even: 0.5 -> 128); NaN -> 0;
    one channel is repeated to grey RGB.
    """
    import numpy as np
    from PIL import Image

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"`images` must be a (B, 3 or 1, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"`images` must be floating point in [0, 1], got {images.dtype}")
    x = images.detach().to("cpu", torch.float32).nan_to_num(0.0).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    arr = x.permute(0, 2, 3, 1).contiguous().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]  # uint8 (H, W, 3) -> mode "RGB"
