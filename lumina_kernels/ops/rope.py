"""RoPE: apply_rope (lumina::rope), its dispatcher, fake kernel and autograd."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext, dispatch, reference
from ._common import _same_device, _tensor

__all__ = ["apply_rope"]


def _rope_inputs(x, freqs_cis, inverse=False):
    return {"x": x, "freqs_cis": freqs_cis}


def _rope_freqs_complex64(inputs: dict) -> str | None:
    if inputs["freqs_cis"].dtype != torch.complex64:
        return f"freqs_cis has dtype {inputs['freqs_cis'].dtype}, the kernels take complex64"
    return None


_rope_dispatch = dispatch.register(
    "apply_rope",
    [
        dispatch.Backend("cuda", dispatch.compiled_backend("cuda", _rope_freqs_complex64), "lumina CUDA kernel"),
        dispatch.Backend("cpu", dispatch.compiled_backend("cpu", _rope_freqs_complex64), "lumina C++ kernel"),
    ],
    _rope_inputs,
)


def apply_rope(x: Tensor, freqs_cis: Tensor, inverse: bool = False) -> Tensor:
    """Rotary position embedding, official Lumina convention.

    x: (B, L, H, D), D even. freqs_cis: complex (L, D/2), or (B, L, D/2) for per-sample positions.
    Pair i of every head, (x[..., 2i], x[..., 2i+1]), is rotated by freqs_cis[..., i] (by its conjugate
    when `inverse`). Math in fp32, output in x's dtype.
    """
    _tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"`x` must be (batch, seq, heads, head_dim), got shape {tuple(x.shape)}")
    B, L, _, D = x.shape
    if D % 2:
        raise ValueError(f"the head dim of `x` (last dimension) must be even, got {D}")
    _tensor(freqs_cis, "freqs_cis", floating=False)
    if not freqs_cis.is_complex():
        raise ValueError(f"`freqs_cis` must be a complex tensor (complex64), got dtype {freqs_cis.dtype}")
    _same_device(freqs_cis, "freqs_cis", x, "x")
    if tuple(freqs_cis.shape) not in ((L, D // 2), (B, L, D // 2)):
        raise ValueError(f"`freqs_cis` must have shape (seq, head_dim/2) = ({L}, {D // 2}) or "
                         f"(batch, seq, head_dim/2) = ({B}, {L}, {D // 2}), got {tuple(freqs_cis.shape)}")
    backend = _rope_dispatch.decide(_rope_inputs(x, freqs_cis)).backend
    if backend == "reference":
        return reference.apply_rope(x, freqs_cis, inverse)
    if torch.compiler.is_compiling():  # traced: no storage offsets to read; a fresh buffer is aligned
        x = x.clone(memory_format=torch.contiguous_format)
    else:
        x = x.contiguous() if x.storage_offset() % 2 == 0 else x.clone()
    return torch.ops.lumina.rope(x, freqs_cis.contiguous(), bool(inverse))


# ----------------------------------------------------------------------------------------------
# fake kernel and autograd of the compiled op
# ----------------------------------------------------------------------------------------------
if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("lumina::rope")
    def _(x, freqs_cis, inverse=False):
        return torch.empty_like(x)

    def _rope_setup(ctx, inputs, output):
        x, freqs_cis, inverse = inputs
        ctx.inverse = inverse
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, freqs_cis)

    def _rope_backward(ctx, grad):
        x, freqs_cis = ctx.saved_tensors
        grad_x = torch.ops.lumina.rope(grad.contiguous(), freqs_cis, not ctx.inverse)
        grad_f = None
        if ctx.needs_input_grad[1]:  # rare (learned tables): differentiate the reference
            with torch.enable_grad():
                f = freqs_cis.detach().requires_grad_(True)
                (grad_f,) = torch.autograd.grad(reference.apply_rope(x.detach(), f, ctx.inverse), f, grad)
        return grad_x, grad_f, None

    torch.library.register_autograd("lumina::rope", _rope_backward, setup_context=_rope_setup)
