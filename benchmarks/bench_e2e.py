"""End-to-end model benchmarks: lumina's NextDiT forward against diffusers' LuminaNextDiT2DModel on the same weights.

    pytest benchmarks/bench_e2e.py --benchmark-only                     # CPU (+ CUDA when present)
    python benchmarks/summarize.py bench.json                           # with --benchmark-json=bench.json

Shape (issue 3): the released model's width (dim 2304, 32 heads, 8 KV heads, head dim 72, caption dim 2048) with
2 layers, batch 2, 32x32 latents (512 image tokens), a 128-token caption (the second one padded to 77), fp32 on the
CPU (bf16 on CUDA). One group per device; in it

    lumina     NextDiT.forward (fused norm kernels, one query projection, GQA without K/V copies)
    diffusers  LuminaNextDiT2DModel.forward (its own RoPE table, sliced per call as its pipeline does)
    gemm       torch.mm at the model's largest GEMM shape (tokens x 2304 -> 6144), the machine's matmul rate

extra_info: flops (matmuls and attention of one forward, counted by torch.utils.flop_counter on the lumina model),
so TFLOP/s = flops / median; for gemm its own flops. Outputs of the two models are checked equal first.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lumina.models import checkpoints as ck
from lumina.models.nextdit import NextDiT, config_from_preset
from lumina.pipelines.tiny import randomize_weights

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda,
                                                   pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")])]


def _setup(device: str, impl: str):
    try:
        from diffusers import LuminaNextDiT2DModel
        from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
    except ImportError:
        if impl == "diffusers":
            pytest.skip("diffusers is not installed")
        LuminaNextDiT2DModel = None

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    cfg = config_from_preset("NextDiT_2B_GQA_patch2", n_layers=2)
    torch.manual_seed(0)
    ours = NextDiT(cfg)
    randomize_weights(ours, std=0.02)  # random weights everywhere, norm gains around 1
    ours = ours.to(device, dtype).eval()
    dmodel = table = None
    if LuminaNextDiT2DModel is not None:
        dargs = {k: v for k, v in ck.config_to_diffusers(cfg).items() if not k.startswith("_")}
        dmodel = LuminaNextDiT2DModel(**dargs)
        dmodel.load_state_dict(ck.official_to_diffusers(ours.state_dict()))
        dmodel = dmodel.to(device, dtype).eval()
        table = get_2d_rotary_pos_embed_lumina(cfg.head_dim, 384, 384).to(device)
    B, L = 2, 128
    x = torch.randn(B, 4, 32, 32, device=device, dtype=dtype)
    t = torch.rand(B, device=device)
    feats = torch.randn(B, L, cfg.context_dim, device=device, dtype=dtype)
    mask = torch.ones(B, L, dtype=torch.int64, device=device)
    mask[1, 77:] = 0
    return cfg, ours, dmodel, (x, t, feats, mask), table


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["lumina", "diffusers", "gemm"])
def test_nextdit_forward(benchmark, device, impl):
    cfg, ours, dmodel, (x, t, feats, mask), table = _setup(device, impl)
    benchmark.group = f"nextdit-2B-width-2layers-b2-32x32 {device}"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        out = ours(x, t, feats, mask)
        if dmodel is not None:  # the same weights give the same velocity
            ref = dmodel(x, t, feats, mask, image_rotary_emb=table, cross_attention_kwargs={}).sample[:, :4]
            tol = 2e-4 if x.dtype == torch.float32 else 5e-2
            torch.testing.assert_close(out, ref, rtol=tol, atol=tol * ref.abs().max().item())
        flops_counter = FlopCounterMode(display=False)
        with flops_counter:
            ours(x, t, feats, mask)
        flops = flops_counter.get_total_flops()

        if impl == "lumina":
            def fn():
                ours(x, t, feats, mask)
                sync()
        elif impl == "diffusers":
            def fn():
                dmodel(x, t, feats, mask, image_rotary_emb=table, cross_attention_kwargs={})
                sync()
        else:
            n = x.shape[0] * (x.shape[2] // 2) * (x.shape[3] // 2)
            a = torch.randn(n, cfg.dim, device=device, dtype=x.dtype)
            w = torch.randn(cfg.dim, cfg.ffn_hidden, device=device, dtype=x.dtype)
            flops = 2 * n * cfg.dim * cfg.ffn_hidden

            def fn():
                torch.mm(a, w)
                sync()
        fn()
        benchmark.extra_info.update(impl=impl, flops=flops, device=device, dtype=str(x.dtype).replace("torch.", ""),
                                    threads=torch.get_num_threads())
        benchmark.pedantic(fn, rounds=15 if device == "cpu" else 30, warmup_rounds=1)
