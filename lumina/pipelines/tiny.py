"""Tiny random text encoder and VAE, written to a directory, for tests and demos (nothing is downloaded).

* :func:`build_tiny_gemma`: a 2-layer ``GemmaModel`` (hidden 32) and a character-level fast tokenizer built in code
  with the ``tokenizers`` library, loadable by ``AutoTokenizer`` / ``AutoModel`` and so by
  :meth:`lumina.pipelines.encoders.TextEncoder.from_pretrained`.
* :func:`build_tiny_vae`: a 2-block ``diffusers.AutoencoderKL`` (downscale 2), loadable by
  :meth:`lumina.pipelines.encoders.VAECodec.from_pretrained`.

Weights are random but fixed: each builder seeds the global CPU RNG inside ``torch.random.fork_rng`` (saved and
restored, so calling a builder does not change the caller's random stream).
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Sequence, Union

import torch

__all__ = ["build_tiny_gemma", "build_tiny_tokenizer", "build_tiny_vae", "build_tiny_pipeline", "randomize_weights",
           "TINY_VOCAB"]

PathLike = Union[str, os.PathLike]

# Special tokens first, at the ids Gemma's config uses by default (pad 0, eos 1, bos 2), then <unk>.
_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
# One token per character: lowercase letters (input is lowercased), digits, space and ASCII punctuation.
TINY_VOCAB: list[str] = _SPECIALS + list(string.ascii_lowercase + string.digits + " " + string.punctuation)


def build_tiny_tokenizer(vocab: Sequence[str] = TINY_VOCAB):
    """A character-level ``PreTrainedTokenizerFast``: lowercases, one token per character (unknown ones ->
    ``<unk>``), prepends ``<bos>``; pad/bos/eos/unk set and ``padding_side="right"``."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = list(vocab)
    missing = [t for t in _SPECIALS if t not in vocab]
    if missing:
        raise ValueError(f"`vocab` must contain the special tokens {_SPECIALS}; missing {missing}")
    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(WordLevel(vocab=ids, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # Every character is its own pre-token (spaces included), so any text tokenizes.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", ids["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=1024,
    )


def build_tiny_gemma(
    path: PathLike,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab: Sequence[str] = TINY_VOCAB,
    seed: int = 0,
) -> Path:
    """Write a tiny random ``GemmaModel`` (``hidden_size``, ``num_layers`` layers, 2 heads, 1 kv head, head_dim
    ``hidden_size // 2``, intermediate ``2 * hidden_size``) and a character-level tokenizer over ``vocab`` to
    ``path`` with ``save_pretrained``; return ``path``. Same ``seed`` -> same weights."""
    from transformers import GemmaConfig, GemmaModel

    path = Path(path)
    tokenizer = build_tiny_tokenizer(vocab)
    config = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden_size // 2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GemmaModel(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_vae(
    path: PathLike,
    latent_channels: int = 4,
    block_out_channels: Sequence[int] = (32, 32),
    scaling_factor: float = 0.13025,
    seed: int = 0,
) -> Path:
    """Write a tiny random ``diffusers.AutoencoderKL`` (one down/up block per entry of ``block_out_channels``, so
    downscale ``2 ** (len - 1)``; one resnet layer per block; GroupNorm groups = gcd of the channels) to ``path``
    with ``save_pretrained`` (safetensors); return ``path``. Same ``seed`` -> same weights."""
    import math

    from diffusers import AutoencoderKL

    path = Path(path)
    blocks = tuple(int(c) for c in block_out_channels)
    if not blocks:
        raise ValueError("`block_out_channels` must not be empty")
    groups = math.gcd(*blocks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(blocks),
            up_block_types=("UpDecoderBlock2D",) * len(blocks),
            block_out_channels=blocks,
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=groups,
            sample_size=32,
            scaling_factor=scaling_factor,
        ).eval()
    path.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(path, safe_serialization=True)
    return path


@torch.no_grad()
def randomize_weights(module: torch.nn.Module, std: float = 0.2, generator: torch.Generator | None = None) -> None:
    """Make every parameter of `module` random, in place: the gains of norm layers (a ``weight`` whose module name
    contains "norm") become ``1 + std * N(0, 1)``, everything else ``std * N(0, 1)``. Zero-initialised gates and
    output layers would otherwise hide convention errors (tests) or leave parts of a model unused (demos).
    Draws from `generator` (a CPU generator) or the global RNG."""
    for name, p in module.named_parameters():
        parts = name.split(".")
        gain = len(parts) > 1 and parts[-1] == "weight" and "norm" in parts[-2]
        noise = std * torch.randn(p.shape, generator=generator).to(p)
        p.copy_(1 + noise if gain else noise)


def build_tiny_pipeline(path: PathLike, seed: int = 0) -> Path:
    """Write a whole tiny RANDOM pipeline directory (transformer/ NextDiT_tiny in the native format, text_encoder/
    from :func:`build_tiny_gemma`, vae/ from :func:`build_tiny_vae`) that ``lumina generate --model path`` runs in
    about a second on a CPU. Its weights are random (the transformer's zero-initialised gates and output layer are
    randomised too, so the run exercises every part): the images are structured noise, not pictures."""
    from ..models.nextdit import NextDiT, config_from_preset

    path = Path(path)
    build_tiny_gemma(path / "text_encoder", seed=seed)
    build_tiny_vae(path / "vae", seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NextDiT(config_from_preset("NextDiT_tiny")).eval()
        randomize_weights(model, std=0.2)
    model.save_pretrained(path / "transformer", ema_state=model.state_dict())
    return path


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lumina.pipelines.tiny",
                                 description="Write a tiny random Lumina pipeline directory (for demos and tests).")
    ap.add_argument("path", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(build_tiny_pipeline(args.path, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
