"""Conditioning: what the model cross-attends to, as ``(feats (B, L, D), mask (B, L))`` context tokens.

* :class:`TextEncoder`: one transformers encoder (tokenizer + model, one hidden layer).
* :class:`MultiTextEncoder`: several, projected to one width and concatenated along tokens (e.g. CLAP + T5).
* :class:`ClassLabels`: an embedding table with a null class.

Layering: imports ``lumina`` helpers, torch and (lazily) transformers; never ``lumina.models`` or the pipelines.
"""
from .labels import ClassLabels
from .multi import MultiTextEncoder
from .text import TextEncoder

__all__ = ["TextEncoder", "MultiTextEncoder", "ClassLabels"]
