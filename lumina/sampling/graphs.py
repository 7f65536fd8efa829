"""CUDA-graph sampling: capture one velocity evaluation (the model forward plus the fused CFG combination) in a CUDA
graph and replay it at every step.

A denoising step of a 2B Next-DiT launches a few thousand small kernels; at 1024^2 and below the GPU waits on the
host between them. A CUDA graph replays the whole evaluation with one launch. :class:`GraphedVelocity` wraps a
``fn(x, t, t_value, *inputs)`` (``t_value``: the host value of ``t``; ``inputs``: per-call tensors such as the
caption features, bound with :meth:`GraphedVelocity.set_inputs` and held in static buffers, so one
``GraphedVelocity`` and its graphs serve every later call of the same shapes and settings) into a solver
``velocity_fn(x, t)``:

* one graph per *key*: ``key_fn(t_value)`` must capture everything the forward decides on the host from the time
  (the RoPE table of the time-aware switch, the context-drop layers, CFG truncation's branch); the shapes and dtypes
  of ``x`` and ``t`` join the key. Within a key the captured work may depend on ``t`` only through the tensor.
* per call: one read of ``t[0]`` to the host (the solver made it from a host float, so the queue is short), copies
  of ``x`` and ``t`` into the graph's static inputs, one replay, a copy of the static output (the solver keeps
  earlier stages' velocities alive, so the output buffer cannot be handed out).
* capture: warm-up runs on a side stream (they fill the RoPE / index caches), then capture into a memory pool that
  all graphs of the sampler share (they never run concurrently and each output is copied out at once).
* a capture that fails (an op that syncs with the host, an allocation the graph cannot own) warns once with the
  reason and runs that sampler eagerly; results are the same either way.

``emulate=True`` runs the same bookkeeping on any device with "graphs" that re-run the captured call on the static
buffers with the capture-time ``t_value``, so CPU tests can check that no host-side time dependence leaks past the
key and that static buffers are never handed out.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Hashable, Optional

import torch
from torch import Tensor

__all__ = ["GraphedVelocity", "pad_context", "graphs_refused"]


class _Entry:
    def __init__(self, x: Tensor, t: Tensor):
        self.x, self.t = x, t
        self.out: Optional[Tensor] = None
        self.graph = None  # torch.cuda.CUDAGraph, or a callable in emulation
        self.replays = 0


class GraphedVelocity:
    """``velocity_fn(x, t)`` replaying one captured graph of ``fn(x, t, t_value)`` per ``key_fn(t_value)``."""

    def __init__(self, fn: Callable[..., Tensor], key_fn: Callable[[float], Hashable], *,
                 warmup: int = 1, emulate: bool = False):
        self.fn, self.key_fn, self.warmup, self.emulate = fn, key_fn, max(1, int(warmup)), bool(emulate)
        self.entries: Dict[Hashable, _Entry] = {}
        self.disabled: Optional[str] = None  # why graphs were given up (then every call runs fn eagerly)
        self.pool = None
        self.inputs: tuple = ()

    def set_inputs(self, *tensors: Tensor) -> None:
        """Bind the per-call tensors passed to ``fn`` after ``t_value``: copied into static buffers that every
        graph reads (their shapes and dtypes must stay those of the first binding)."""
        if not self.inputs:
            self.inputs = tuple(t.clone() for t in tensors)
            return
        if len(tensors) != len(self.inputs) or any(a.shape != b.shape or a.dtype != b.dtype or a.device != b.device
                                                    for a, b in zip(tensors, self.inputs)):
            raise ValueError("GraphedVelocity.set_inputs: the inputs must keep the shapes, dtypes and devices of "
                             "the first binding; make a new GraphedVelocity for other shapes")
        for dst, src in zip(self.inputs, tensors):
            dst.copy_(src)

    @property
    def captures(self) -> int:
        return len(self.entries)

    @property
    def replays(self) -> int:
        return sum(e.replays for e in self.entries.values())

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        t_value = float(t.reshape(-1)[0])
        if self.disabled is not None:
            return self.fn(x, t, t_value, *self.inputs)
        key = (self.key_fn(t_value), tuple(x.shape), x.dtype, tuple(t.shape), t.dtype, x.device)
        entry = self.entries.get(key)
        if entry is None:
            try:
                entry = self._capture(x, t, t_value)
            except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager, loudly
                self.disabled = f"{type(e).__name__}: {e}"
                warnings.warn(f"CUDA-graph capture failed, sampling eagerly: {self.disabled}", RuntimeWarning,
                              stacklevel=2)
                if not self.emulate and torch.cuda.is_available():
                    torch.cuda.synchronize()
                return self.fn(x, t, t_value, *self.inputs)
            self.entries[key] = entry
        entry.x.copy_(x)
        entry.t.copy_(t)
        entry.graph()
        entry.replays += 1
        return entry.out.clone()

    # -- capture ---------------------------------------------------------------------------------
    def _capture(self, x: Tensor, t: Tensor, t_value: float) -> _Entry:
        entry = _Entry(x.clone(), t.clone())
        if self.emulate:
            fn, inputs = self.fn, self.inputs  # a replay re-runs what was captured
            entry.out = fn(entry.x, entry.t, t_value, *inputs).clone()

            def replay():
                entry.out.copy_(fn(entry.x, entry.t, t_value, *inputs))

            entry.graph = replay
            return entry
        if x.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device, got {x.device}")
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(entry.x, entry.t, t_value, *self.inputs)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            entry.out = self.fn(entry.x, entry.t, t_value, *self.inputs)
        entry.graph = graph.replay
        return entry


def pad_context(feats: torch.Tensor, mask: torch.Tensor, bucket: int):
    """Pad (B, L, D) caption features with zeros and their (B, L) mask with False up to a multiple of `bucket`."""
    L = feats.shape[1]
    pad = -L % bucket
    if pad == 0:
        return feats, mask
    feats = torch.nn.functional.pad(feats, (0, 0, 0, pad))
    mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    return feats, mask


def graphs_refused(cuda_graphs, device: torch.device, scaling) -> str | None:
    """None when CUDA graphs will be used, else why not (ValueError when they were required); ``scaling``: the
    call's RopeScaling (a table rebuilt at every t cannot be captured)."""
    if cuda_graphs not in (None, True, False, "emulate"):
        raise ValueError(f"`cuda_graphs` must be None (auto), True, False or 'emulate', got {cuda_graphs!r}")
    if cuda_graphs is False:
        return "off (cuda_graphs=False)"
    reason = None
    if cuda_graphs != "emulate" and device.type != "cuda":
        reason = f"the device is {device.type}, not cuda"
    elif scaling.active and scaling.method == "smooth_time_aware":
        reason = "RoPE scaling 'smooth_time_aware' builds a new table at every t"
    if reason is not None and cuda_graphs is True:
        raise ValueError(f"`cuda_graphs=True` but CUDA graphs cannot be used: {reason}")
    return reason
