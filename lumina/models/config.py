"""Next-DiT configuration and presets: plain data, no torch.nn (checkpoint io reads it without the modules).

One config describes every modality: the backbone shape (dim, layers, heads, FFN), the conditioning (context_dim:
the feature size of the context tokens the blocks cross-attend to, None for no cross-attention), the RoPE split
of the head dim over the position axes (rope_axis_dims) and the modality adapter (a name in the registry of
:mod:`lumina.models.modality`, filled by :mod:`lumina.modalities`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .._checks import integer

__all__ = ["NextDiTConfig", "PRESETS", "config_from_preset", "LEGACY_FIELDS"]

# field names written by earlier versions -> today's names (read by NextDiTConfig.from_dict)
LEGACY_FIELDS = {"cap_feat_dim": "context_dim"}


def _positive_int(value, name: str) -> int:
    return integer(value, name, minimum=1)


@dataclass(frozen=True)
class NextDiTConfig:
    patch_size: int = 2  # tokens cover patch_size latent units along each patched axis of the modality
    in_channels: int = 4
    dim: int = 2304
    n_layers: int = 24
    n_heads: int = 32
    n_kv_heads: int | None = 8
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    learn_sigma: bool = True
    qk_norm: bool = True
    context_dim: int | None = 2048  # feature size of the context (caption) tokens; None = no cross-attention
    rope_theta: float = 10000.0
    # one share of the head dim per position axis of the modality (each even, summing to head_dim);
    # None = the head dim split evenly over the modality's axes (the released model: 2 axes of 36)
    rope_axis_dims: tuple[int, ...] | None = None
    sample_size: int = 128  # training extent in latent units along the RoPE-scaled axes (1024 px / 8 for T2I)
    modality: str = "image"  # a name of lumina.modalities (the adapter that tokenizes samples)
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        for n in ("patch_size", "in_channels", "dim", "n_layers", "n_heads", "multiple_of", "sample_size"):
            _positive_int(getattr(self, n), n)
        if self.n_kv_heads is not None:
            _positive_int(self.n_kv_heads, "n_kv_heads")
        if self.context_dim is not None:
            _positive_int(self.context_dim, "context_dim")
        if self.dim % self.n_heads:
            raise ValueError(f"`dim` ({self.dim}) must be divisible by `n_heads` ({self.n_heads})")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"`n_heads` ({self.n_heads}) must be divisible by `n_kv_heads` ({self.kv_heads})")
        if not isinstance(self.modality, str) or not self.modality:
            raise ValueError(f"`modality` must be a registered modality name, got {self.modality!r}")
        if self.rope_axis_dims is not None:
            dims = self.rope_axis_dims
            if isinstance(dims, (str, bytes)) or not hasattr(dims, "__iter__"):
                raise ValueError(f"`rope_axis_dims` must be a sequence of even integers, got {dims!r}")
            dims = tuple(_positive_int(d, "rope_axis_dims") for d in dims)
            if not dims or any(d % 2 for d in dims):
                raise ValueError(f"`rope_axis_dims` must be one or more positive even integers, got {dims}")
            if sum(dims) != self.head_dim:
                raise ValueError(f"`rope_axis_dims` {dims} must sum to the head dim dim/n_heads = {self.head_dim}, "
                                 f"got {sum(dims)}")
            object.__setattr__(self, "rope_axis_dims", dims)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def adaln_dim(self) -> int:
        """Size of the conditioning vector c (time + pooled context) that drives every adaLN modulation."""
        return min(self.dim, 1024)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    def axis_dims(self, n_axes: int) -> tuple[int, ...]:
        """The RoPE share of each of `n_axes` position axes: rope_axis_dims, or the head dim split evenly."""
        if self.rope_axis_dims is not None:
            if len(self.rope_axis_dims) != n_axes:
                raise ValueError(f"`rope_axis_dims` {self.rope_axis_dims} has {len(self.rope_axis_dims)} entries but "
                                 f"the {self.modality!r} modality has {n_axes} position axes")
            return self.rope_axis_dims
        hd = self.head_dim
        if hd % (2 * n_axes):
            raise ValueError(f"the head dim {hd} does not split into {n_axes} even RoPE shares: pass "
                             f"`rope_axis_dims` (one even entry per axis, summing to {hd})")
        return (hd // n_axes,) * n_axes

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["rope_axis_dims"] is not None:
            d["rope_axis_dims"] = list(d["rope_axis_dims"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NextDiTConfig":
        """A config from `to_dict` output (or an earlier version's: see LEGACY_FIELDS); unknown keys are refused."""
        d = {LEGACY_FIELDS.get(k, k): v for k, v in d.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown NextDiTConfig fields {unknown}; known: {sorted(known)}")
        if isinstance(d.get("rope_axis_dims"), list):
            d["rope_axis_dims"] = tuple(d["rope_axis_dims"])
        return cls(**d)


PRESETS: dict[str, NextDiTConfig] = {
    # the released text-to-image model (Lumina-Next-T2I / -SFT)
    "NextDiT_2B_GQA_patch2": NextDiTConfig(dim=2304, n_layers=24, n_heads=32, n_kv_heads=8, name="NextDiT_2B_GQA_patch2"),
    "NextDiT_2B_patch2": NextDiTConfig(dim=2304, n_layers=24, n_heads=32, n_kv_heads=None, name="NextDiT_2B_patch2"),
    # small configs for tests, demos and the bundled model
    "NextDiT_small": NextDiTConfig(dim=512, n_layers=6, n_heads=8, n_kv_heads=4, context_dim=384, multiple_of=64,
                                   sample_size=32, name="NextDiT_small"),
    "NextDiT_tiny": NextDiTConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, context_dim=32, multiple_of=16,
                                  sample_size=16, name="NextDiT_tiny"),
}


def config_from_preset(name: str, **overrides) -> NextDiTConfig:
    """PRESETS[name] with `overrides` (field names, or their LEGACY_FIELDS spellings)."""
    if name not in PRESETS:
        raise ValueError(f"unknown NextDiT preset {name!r}; known presets: {sorted(PRESETS)}")
    overrides = {LEGACY_FIELDS.get(k, k): v for k, v in overrides.items()}
    known = {f.name for f in fields(NextDiTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown NextDiTConfig fields {unknown}; known: {sorted(known)}")
    return replace(PRESETS[name], **overrides)
