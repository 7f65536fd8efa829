"""The transformer step, interleaved in one process: lumina (fused GEMMs), lumina (unfused) and diffusers.

    python -m benchmarks.step_ab --config mid --runs 9          # NextDiT_small, the e2e "mid" step
    python -m benchmarks.step_ab --config 2B-2L --runs 7        # the 2B width with 2 layers (bench_e2e.py)
    python -m benchmarks.step_ab --config mid --profile 3       # + torch.profiler top ops of each impl

On a shared machine separate processes (benchmarks/e2e.py runs each case in its own) see different loads; here every
round times each implementation once, in a rotating order, so slow phases hit all of them. Reports the median,
min-max and IQR of the rounds and the ratios of medians. Inputs are those of e2e.py ("mid": the doubled CFG batch,
256 px, 32 caption tokens, proportional attention) and bench_e2e.py ("2B-2L": batch 2, 32x32 latents, 128 caption
tokens, the second padded to 77). fp32; outputs checked against diffusers first.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from lumina.models import checkpoints as ck
from lumina.models import fused
from lumina.models.nextdit import NextDiT, config_from_preset
from lumina.pipelines.tiny import randomize_weights


def setup(config: str):
    from diffusers import LuminaNextDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    if config == "mid":
        cfg = config_from_preset("NextDiT_small")
    elif config == "2B-2L":
        cfg = config_from_preset("NextDiT_2B_GQA_patch2", n_layers=2)
    else:
        raise SystemExit(f"unknown config {config!r}")
    torch.manual_seed(0)
    model = NextDiT(cfg)
    randomize_weights(model, std=0.02)
    model = model.eval()
    dargs = {k: v for k, v in ck.config_to_diffusers(cfg).items() if not k.startswith("_")}
    dmodel = LuminaNextDiT2DModel(**dargs)
    dmodel.load_state_dict(ck.official_to_diffusers(model.state_dict()))
    dmodel = dmodel.eval()
    table = get_2d_rotary_pos_embed_lumina(cfg.head_dim, 384, 384)
    g = torch.Generator().manual_seed(0)
    if config == "mid":  # e2e.py: 256 px, an 8x VAE -> 32x32 latents, the doubled CFG batch
        x = torch.randn(2, 4, 32, 32, generator=g)
        t = torch.full((2,), 0.5)
        feats = torch.randn(2, 32, cfg.context_dim, generator=g)
        mask = torch.ones(2, 32, dtype=torch.bool)
        kw = dict(base_seq_len=(cfg.sample_size // cfg.patch_size) ** 2)
    else:  # bench_e2e.py
        x = torch.randn(2, 4, 32, 32, generator=g)
        t = torch.rand(2, generator=g)
        feats = torch.randn(2, 128, cfg.context_dim, generator=g)
        mask = torch.ones(2, 128, dtype=torch.bool)
        mask[1, 77:] = False
        kw = {}

    def lumina_fused():
        fused.FUSED_GEMM = True
        return model(x, t, feats, mask, **kw)

    def lumina_unfused():
        fused.FUSED_GEMM = False
        try:
            return model(x, t, feats, mask, **kw)
        finally:
            fused.FUSED_GEMM = True

    def diffusers_step():
        return dmodel(x, t, feats, mask.long(), image_rotary_emb=table, cross_attention_kwargs={}).sample

    return cfg, {"lumina": lumina_fused, "lumina-unfused": lumina_unfused, "diffusers": diffusers_step}, kw


def _quartiles(v):
    if len(v) < 2:  # one round: no spread
        return v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="mid", choices=["mid", "2B-2L"])
    p.add_argument("--runs", type=int, default=9, help="interleaved rounds (each times every impl once)")
    p.add_argument("--impls", default="lumina,lumina-unfused,diffusers")
    p.add_argument("--profile", type=int, default=0, help="also profile N steps of each impl (top CPU ops)")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    cfg, fns, kw = setup(a.config)
    impls = a.impls.split(",")
    with torch.inference_mode():
        ref = fns["diffusers"]()[:, :4] if "diffusers" in fns else None
        for name in impls:
            out = fns[name]()
            if name != "diffusers":
                if kw:
                    print(f"[step_ab] {name}: not compared (proportional attention: diffusers has no base_seq_len)",
                          file=sys.stderr)
                    continue
                err = ((out - ref).abs().max() / ref.abs().max()).item()
                print(f"[step_ab] {name}: max |lumina - diffusers| / max |diffusers| = {err:.2e}", file=sys.stderr)
        times = {n: [] for n in impls}
        for r in range(a.runs):
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            for name in order:
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
        print(f"# transformer step, {a.config} ({cfg.name}, dim {cfg.dim}, {cfg.n_layers} layers), fp32 CPU, "
              f"{torch.get_num_threads()} threads, {a.runs} interleaved rounds, torch {torch.__version__}\n")
        print("| impl | median | IQR | min - max | x diffusers (medians) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        med = {n: statistics.median(v) for n, v in times.items()}
        for n, v in times.items():
            q1, q3 = _quartiles(v)
            xd = f"{med['diffusers'] / med[n]:.3f}" if "diffusers" in med else "-"
            print(f"| {n} | {med[n] * 1e3:.1f} ms | {q1 * 1e3:.1f} - {q3 * 1e3:.1f} ms | "
                  f"{min(v) * 1e3:.1f} - {max(v) * 1e3:.1f} ms | {xd} |")
        if "lumina" in med and "lumina-unfused" in med:
            ratios = [u / f for u, f in zip(times["lumina-unfused"], times["lumina"])]
            q1, q3 = _quartiles(ratios)
            print(f"\nfused vs unfused, per round (unfused / fused): median {statistics.median(ratios):.3f}, "
                  f"IQR {q1:.3f} - {q3:.3f}, min-max {min(ratios):.3f} - {max(ratios):.3f}")
        if a.profile:
            from torch.profiler import ProfilerActivity, profile

            for name in impls:
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(a.profile):
                        fns[name]()
                print(f"\n## profile: {name} ({a.profile} steps)\n")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
    return 0


if __name__ == "__main__":
    sys.exit(main())
