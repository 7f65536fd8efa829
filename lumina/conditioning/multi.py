"""Several text encoders as one context: each encoder's features are projected to one width and the token
sequences concatenated (audio: CLAP for the caption + FLAN-T5 for the structured caption).

    enc = MultiTextEncoder([clap, t5], dim=1024)
    feats, mask = enc.encode(prompts)                   # the same prompts to every encoder
    feats, mask = enc.encode([captions, structured])    # or one list of prompts per encoder

The projections (``nn.Linear(encoder.dim, dim)``, or the identity for an encoder already ``dim`` wide when
``project="auto"``) are learnable and belong to the trained model's conditioning: save them with
:meth:`state_dict`. The encoders themselves stay frozen (run under ``no_grad``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MultiTextEncoder"]


class MultiTextEncoder(nn.Module):
    """``encode(prompts) -> (feats (B, sum L_i, dim), mask (B, sum L_i))``, encoder i's tokens in block i."""

    def __init__(self, encoders: Sequence[nn.Module], dim: int, project: str = "auto"):
        super().__init__()
        encoders = list(encoders) if isinstance(encoders, Sequence) else []
        if not encoders or not all(hasattr(e, "encode") and hasattr(e, "dim") for e in encoders):
            raise ValueError("`encoders` must be a non-empty list of text encoders (with .encode and .dim)")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"`dim` must be an int >= 1, got {dim!r}")
        if project not in ("auto", "always"):
            raise ValueError(f"`project` must be 'auto' or 'always', got {project!r}")
        self.encoders = nn.ModuleList(encoders)
        self.projections = nn.ModuleList(
            nn.Identity() if project == "auto" and e.dim == dim else nn.Linear(e.dim, dim) for e in encoders)
        self.dim = dim

    def _prompts(self, prompts) -> list[list[str]]:
        n = len(self.encoders)
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts
                                        and all(isinstance(p, str) for p in prompts)):
            return [[prompts] if isinstance(prompts, str) else list(prompts)] * n
        per = list(prompts) if isinstance(prompts, Sequence) else []
        if len(per) != n or not all(isinstance(p, Sequence) and p and all(isinstance(s, str) for s in p) for p in per):
            raise ValueError(f"`prompts` must be a string, a list of strings, or one list of strings per encoder ({n})")
        if len({len(p) for p in per}) != 1:
            raise ValueError(f"`prompts`: every encoder needs the same batch, got sizes {[len(p) for p in per]}")
        return [list(p) for p in per]

    def encode(self, prompts) -> tuple[Tensor, Tensor]:
        feats, masks = [], []
        for enc, proj, batch in zip(self.encoders, self.projections, self._prompts(prompts)):
            with torch.no_grad():
                f, m = enc.encode(batch)  # (B, L_i, D_i), (B, L_i)
            w = next(proj.parameters(), None)
            feats.append(proj(f.to(w.dtype if w is not None else f.dtype)))  # (B, L_i, dim)
            masks.append(m.bool())
        return torch.cat(feats, dim=1), torch.cat(masks, dim=1)  # (B, sum L_i, dim), (B, sum L_i)

    def forward(self, prompts) -> tuple[Tensor, Tensor]:
        return self.encode(prompts)
