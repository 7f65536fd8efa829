"""Class labels as context: an embedding table with a null class (classifier-free guidance, label dropout).

    labels = ClassLabels(n_classes=1000, dim=768)
    feats, mask = labels.encode(torch.tensor([3, 7]))          # (2, 1, 768), (2, 1)
    feats, mask = labels.encode(y, drop=0.1, generator=g)     # training: 10% of labels become the null class
    feats, mask = labels.encode(labels.null(2))                # the unconditional branch of CFG

The features are one context token per sample: a model with ``context_dim = dim`` cross-attends to it (and pools
it into its conditioning vector) exactly as to a caption. The table is learnable, trained with the model.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ClassLabels"]


class ClassLabels(nn.Module):
    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        for name, v in (("n_classes", n_classes), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {v!r}")
        self.n_classes, self.dim = n_classes, dim
        self.embedding = nn.Embedding(n_classes + 1, dim)  # row n_classes: the null class
        nn.init.normal_(self.embedding.weight, std=0.02)

    @property
    def null_class(self) -> int:
        return self.n_classes

    def null(self, batch: int, device=None) -> Tensor:
        """`batch` null labels (the unconditional input)."""
        return torch.full((batch,), self.null_class, dtype=torch.long, device=device)

    def encode(self, labels: Tensor, drop: float = 0.0, generator: torch.Generator | None = None):
        """labels (B,) int in [0, n_classes] (n_classes = null) -> (feats (B, 1, dim), mask (B, 1) all True);
        `drop`: the probability that a label is replaced by the null class (drawn from `generator`, on the CPU)."""
        if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f"`labels` must be a (B,) integer tensor, got "
                             f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.n_classes):
            raise ValueError(f"`labels` must be in [0, {self.n_classes}] ({self.n_classes} = the null class), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        if not 0.0 <= drop <= 1.0:
            raise ValueError(f"`drop` must be a probability in [0, 1], got {drop!r}")
        if drop > 0:
            dropped = torch.rand(labels.shape, generator=generator) < drop
            labels = torch.where(dropped.to(labels.device), self.null_class, labels)
        feats = self.embedding(labels.long())[:, None, :]  # (B, dim) -> (B, 1, dim)
        return feats, torch.ones(labels.shape[0], 1, dtype=torch.bool, device=labels.device)

    def forward(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode(labels)
