"""The lumina ops in Python, one module per op family: typed wrappers, argument checks, fake (meta) kernels and
autograd.

    _common.py    the argument checks shared by the wrappers (ValueError naming the argument)
    norm.py       rms_norm, modulated_rms_norm, gated_rms_norm_residual (lumina::fused_rms_norm)
    rope.py       apply_rope (lumina::rope)
    attention.py  attention (lumina::attention_fwd / attention_bwd; torch SDPA after apply_rope)
    merge.py      merge_tokens (lumina::merge_tokens, lumina::merge_tokens_cells)
    solver.py     solver_update, cfg_combine (inference only)

Each public function validates its arguments (ValueError naming the argument), asks the dispatcher
which backend runs them, then calls either the compiled op `torch.ops.lumina.*` (CPU or CUDA
kernel, differentiable through `register_autograd`) or its reference in `reference.py`. Importing this
package registers every dispatcher, fake kernel and autograd formula; it re-exports each family's names.
"""
from __future__ import annotations

from .. import _ext, dispatch, reference  # noqa: F401  (lumina_kernels.ops.reference etc., as before the split)
from ._common import _eps, _inference_only, _no_host_sync, _real, _same_device, _tensor  # noqa: F401
from .norm import (NORM_CUDA_MAX_VECTORS_PER_ROW, _fused_rms_norm, _modulation, _norm_dim_fits_cuda,  # noqa: F401
                   _norm_dispatch, _norm_inputs, gated_rms_norm_residual, modulated_rms_norm, rms_norm)
from .rope import _rope_dispatch, _rope_freqs_complex64, _rope_inputs, apply_rope  # noqa: F401
from .attention import (CUDA_HEAD_DIMS, CUDA_MAX_GRID_YZ, SDPA_MIN_FORWARD_WORK, SDPA_MIN_SCORES,  # noqa: F401
                        _attn_cpu_slower, _attn_dispatch, _attn_fits_cuda_kernel, _attn_inputs, _attn_sdpa_check,
                        _attn_tables_fit_kernel, _has_amx, _rope_table_arg, _sdpa_after_rope, attention)
from .merge import (_axes, _check_cell_range, _merge_cells, _merge_dispatch, _merge_grid,  # noqa: F401
                    _merge_inputs, merge_tokens)
from .solver import (MAX_SOLVER_TERMS, SOLVER_DTYPES, STATE_DTYPES, _cfg_check, _cfg_dispatch,  # noqa: F401
                     _cfg_inputs, _solver_update_check, _solver_update_dispatch, _solver_update_inputs,
                     cfg_combine, solver_update)

__all__ = ["rms_norm", "modulated_rms_norm", "gated_rms_norm_residual", "apply_rope", "attention", "merge_tokens",
           "solver_update", "cfg_combine"]
