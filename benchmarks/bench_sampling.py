"""Sampling speed: context drop and CUDA graphs against the plain eager sampler, measured side by side.

    pytest benchmarks/bench_sampling.py --benchmark-only [-m cuda] --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json        # "x ref" = speed-up over the eager row of the group

The issue-6 goal: 30 model evaluations with CFG (euler, 30 steps, guidance 4, batch 1 -> 2 rows per evaluation),
the 2B config (NextDiT_2B_GQA_patch2, 24 layers) with random weights in bf16 on CUDA, at 1024^2 (128^2 latents,
4096 image tokens) and 2048^2 (256^2 latents, 16384 tokens): context drop + CUDA graphs >= 1.3x faster than eager
at 1024^2 and >= 2x at 2048^2. Speed does not depend on the weights.

The pipeline is the real one (LuminaPipeline.__call__ with output_type="latent"): only the text encoder is replaced
by random caption features (128 tokens, 2048-d) and the codec by the identity (PixelCodec over 4 latent channels),
so what is timed is the transformer and the sampler. Rows of a group:

    eager            cuda_graphs=False, no context drop (the baseline)
    graphs           CUDA graphs, no context drop
    drop             context drop (factor 2, the default schedule: t < 0.6, every layer), eager
    drop+graphs      both

On the CPU the same rows run the tiny config (NextDiT_tiny) at 32^2 latents (graphs are refused there:
the "graphs" rows are eager and marked so), a smoke test of the benchmark itself.
"""
from __future__ import annotations

import pytest
import torch

from lumina.models.nextdit import NextDiT, config_from_preset
from lumina.codecs import PixelCodec
from lumina.pipelines.text_to_image import LuminaPipeline
from lumina.pipelines.tiny import randomize_weights

MODES = {
    "eager": dict(cuda_graphs=False, context_drop=0),
    "graphs": dict(cuda_graphs=None, context_drop=0),
    "drop": dict(cuda_graphs=False, context_drop=2),
    "drop+graphs": dict(cuda_graphs=None, context_drop=2),
}
CASES = [
    pytest.param("cpu", 32, id="cpu-32"),
    pytest.param("cuda", 128, id="cuda-1024px", marks=[pytest.mark.cuda]),
    pytest.param("cuda", 256, id="cuda-2048px", marks=[pytest.mark.cuda]),
]


class RandomCaptions:
    """Stands in for the text encoder: fixed random caption features, 128 tokens (the second row padded to 77)."""

    def __init__(self, dim: int, length: int = 128):
        self.dim, self.length = dim, length

    def encode(self, prompts):
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(len(prompts), self.length, self.dim, generator=g)
        mask = torch.ones(len(prompts), self.length, dtype=torch.int64)
        if len(prompts) > 1:
            mask[1:, 77:] = 0
        return feats, mask


_PIPES: dict = {}


def _pipeline(device: str) -> LuminaPipeline:
    if device not in _PIPES:
        _PIPES.clear()
        preset = "NextDiT_2B_GQA_patch2" if device == "cuda" else "NextDiT_tiny"
        cfg = config_from_preset(preset)
        torch.manual_seed(0)
        with torch.device(device):
            model = NextDiT(cfg)
        randomize_weights(model, std=0.02)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = model.to(device, dtype).eval()
        _PIPES[device] = LuminaPipeline(model, RandomCaptions(cfg.context_dim), PixelCodec(cfg.in_channels))
    return _PIPES[device]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("device,latent", CASES)
def test_sampling(benchmark, device, latent, mode):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU")
    if device == "cuda" and latent == 256 and mode in ("graphs", "drop"):
        pytest.skip("2048px: only eager and drop+graphs (device-time budget)")
    pipe = _pipeline(device)
    kw = dict(steps=30, solver="euler", cfg=4.0, height=latent, width=latent, seed=0, output_type="latent",
              progress=False, **MODES[mode])

    def run():
        out = pipe("a photo", **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    rounds = 1 if latent == 256 else 2
    benchmark.group = f"sample e2e {device} {str(pipe.dtype).replace('torch.', '')} {latent * 8}px"
    with torch.inference_mode():
        out = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
    assert torch.isfinite(out).all()
    run_info = pipe.last_run
    graphs = run_info["cuda_graphs"]
    benchmark.extra_info.update(
        impl=mode, device=device, dtype=str(pipe.dtype).replace("torch.", ""), tokens=(latent // 2) ** 2,
        nfe=run_info["nfe"], context_drop=run_info["context_drop"] or "off",
        timing="graphs" if isinstance(graphs, dict) else f"eager ({graphs})",
        backend=device)
    assert run_info["nfe"] == 30
