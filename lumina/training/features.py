"""What a training step feeds the model: caption features (frozen text encoder) and codec latents of the samples,
each through the optional on-disk :class:`lumina.training.data.FeatureCache`."""
from __future__ import annotations

import torch

from ..codecs import VAECodec
from .data import content_key

__all__ = ["encode_text", "encode_samples"]


@torch.no_grad()
def encode_text(text_encoder, cache, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(feats (B, L, D), mask (B, L)) of the captions; cached per caption when a cache is given (one batched encoder
    call for every caption not cached yet)."""
    if cache is None:
        return text_encoder.encode(captions)
    key_of = {c: cache.key("text", c) for c in captions}
    found = {c: cache.get(k) for c, k in key_of.items()}
    missing = sorted(c for c, entry in found.items() if entry is None)
    if missing:
        f, m = text_encoder.encode(missing)
        for i, c in enumerate(missing):
            found[c] = {"feats": f[i][m[i]].float().cpu().contiguous()}
            cache.put(key_of[c], found[c])
    feats = [found[c]["feats"] for c in captions]
    L = max(f.shape[0] for f in feats)
    out = torch.zeros(len(feats), L, feats[0].shape[-1])
    mask = torch.zeros(len(feats), L, dtype=torch.bool)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return out.to(device), mask.to(device)


@torch.no_grad()
def encode_samples(codec, cache, batch: dict, dataset, codec_id: str, generator: torch.Generator,
                   device) -> list[torch.Tensor]:
    """Codec latents of the batch's samples. A VAE samples its latent with the training generator; with a cache,
    the latent distribution's mode is cached per (file content, crop, VAE) and reused."""
    samples = batch["samples"]
    if cache is None or not isinstance(codec, VAECodec):
        return [codec.encode(x[None].to(device), generator=generator)[0].float() for x in samples]
    out = []
    for x, idx, crop in zip(samples, batch["indices"].tolist(), batch["crops"]):
        key = cache.key("latent", content_key(dataset.path(idx), crop), codec_id, str(tuple(x.shape)))
        hit = cache.get(key)
        if hit is None:
            hit = {"z": codec.encode(x[None].to(device), sample=False)[0].float().cpu().contiguous()}
            cache.put(key, hit)
        out.append(hit["z"].to(device))
    return out
