"""End-to-end generation: lumina against diffusers' LuminaPipeline on the same random weights, with peak memory.

    python -m benchmarks.e2e                                  # CPU: the tiny and mid configs, fp32
    python -m benchmarks.e2e --device cuda                    # GPU: the 2B config, bf16, 1024^2 and 2048^2
    python -m benchmarks.e2e --configs mid --runs 3 --results benchmarks/results

What one case times (every case in a fresh subprocess, so its peak memory is its own):

* ``generate``: the whole call, prompt -> image tensor: text encoding, 30 model evaluations with CFG (Euler, 30
  steps; guidance 4, batch 1 -> a doubled batch of 2 per evaluation), VAE decode. lumina:
  ``LuminaPipeline(prompt, solver="euler", steps=30, cfg=4, output_type="pt")``; diffusers:
  ``diffusers.LuminaPipeline(prompt, num_inference_steps=30, guidance_scale=4, output_type="pt")`` (its
  scheduler is FlowMatchEuler: one evaluation per step, so both do 30). Median of ``--runs`` after one warm-up
  call (which also captures lumina's CUDA graphs: they are kept with the pipeline across calls).
* ``step``: one transformer evaluation on the doubled batch (lumina ``NextDiT.forward``, diffusers
  ``LuminaNextDiT2DModel.forward`` with its RoPE table), median of ``--runs`` x 3 after a warm-up.
* ``peak``: peak memory of the case: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak resident set
  (``ru_maxrss``) on the CPU.
* ``floor``: the compute floor of ``generate``'s evaluations: the FLOPs of 30 evaluations (counted with
  ``torch.utils.flop_counter`` on one lumina evaluation) over the machine's dense matmul rate, measured in the same
  run (``torch.mm`` of square matrices in the model's dtype).

Both pipelines get the same transformer weights (lumina's random NextDiT, converted with
``lumina.models.checkpoints.official_to_diffusers``), the same random Gemma text encoder (the config's caption
width, 2 layers: not gemma-2b's 18, so text encoding is cheap in both) with the same tokenizer, and the same random
AutoencoderKL (the SDXL VAE's architecture for the 2B config). lumina pads captions to the longest prompt (a
multiple of 8), diffusers always to 256 tokens: that difference is part of what is compared.

lumina runs in several modes: ``eager`` (no CUDA graphs, no context drop), ``graphs`` (CUDA graphs), ``drop``
(context drop factor 2, default schedule), ``drop+graphs``. On the CPU graphs are not available: eager and drop.

Configs: ``tiny`` (NextDiT_tiny, 64 px, tiny VAE), ``mid`` (NextDiT_small: dim 512, 6 layers; 256 px; a small
SDXL-shaped VAE), ``2B`` (NextDiT_2B_GQA_patch2; 1024 and 2048 px; the SDXL VAE architecture). ``--deadline``
stops starting new cases after that many seconds (the rest are listed as skipped), for the device check.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .summarize import run_commit

ROOT = Path(__file__).resolve().parent.parent
STEPS, CFG = 30, 4.0
PROMPT = "a red fox in the snow"

# config -> (preset, sizes in px, gemma hidden size, VAE blocks, VAE layers per block)
CONFIGS = {
    "tiny": ("NextDiT_tiny", (64,), 32, (32, 32), 1),
    "mid": ("NextDiT_small", (256,), 384, (32, 64, 64, 64), 1),
    "2B": ("NextDiT_2B_GQA_patch2", (1024, 2048), 2048, (128, 256, 512, 512), 2),
}
CPU_MODES = ("eager", "drop")
CUDA_MODES = ("eager", "graphs", "drop", "drop+graphs")


@dataclass
class Case:
    impl: str  # "lumina" or "diffusers"
    config: str
    size: int
    mode: str  # lumina's mode; "-" for diffusers
    device: str
    runs: int

    @property
    def name(self) -> str:
        return f"{self.config} {self.size}px {self.impl}{'' if self.mode == '-' else ' ' + self.mode}"


# ------------------------------------------------------------------------------------------------
# building the parts (in the case's own process)
# ------------------------------------------------------------------------------------------------
def _parts(config: str, device: str, dtype):
    import torch
    from diffusers import AutoencoderKL
    from transformers import GemmaConfig, GemmaModel

    from lumina.models.nextdit import NextDiT, config_from_preset
    from lumina.pipelines.tiny import build_tiny_tokenizer, randomize_weights

    preset, _, hidden, blocks, layers = CONFIGS[config]
    cfg = config_from_preset(preset)
    torch.manual_seed(0)
    with torch.device(device):
        model = NextDiT(cfg)
    randomize_weights(model, std=0.02)
    model = model.to(device, dtype).eval()
    tok = build_tiny_tokenizer()
    gcfg = GemmaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                       num_attention_heads=max(1, hidden // 256), num_key_value_heads=1,
                       head_dim=min(256, hidden // max(1, hidden // 256)), max_position_embeddings=1024,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(1)
    gemma = GemmaModel(gcfg).to(device, dtype).eval()
    torch.manual_seed(2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                        up_block_types=("UpDecoderBlock2D",) * len(blocks), block_out_channels=blocks,
                        layers_per_block=layers, latent_channels=4, norm_num_groups=math.gcd(*blocks, 32),
                        scaling_factor=0.13025).to(device).eval()
    return cfg, model, tok, gemma, vae


def _lumina(cfg, model, tok, gemma, vae):
    from lumina.codecs import VAECodec
    from lumina.conditioning import TextEncoder
    from lumina.pipelines.text_to_image import LuminaPipeline

    return LuminaPipeline(model, TextEncoder(tok, gemma, layer=-2, max_length=256), VAECodec(vae))


def _diffusers(cfg, model, tok, gemma, vae, device, dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler, LuminaNextDiT2DModel, LuminaPipeline

    from lumina.models import checkpoints as ck

    dargs = {k: v for k, v in ck.config_to_diffusers(cfg).items() if not k.startswith("_")}
    dmodel = LuminaNextDiT2DModel(**dargs)
    dmodel.load_state_dict(ck.official_to_diffusers(model.state_dict()))
    dmodel = dmodel.to(device, dtype).eval()
    vae = vae.to(dtype)  # diffusers' pipeline decodes in the transformer's dtype
    return LuminaPipeline(transformer=dmodel, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                          text_encoder=gemma, tokenizer=tok), dmodel


def _sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, runs):
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def matmul_rate(device: str, dtype) -> float:
    """Dense matmul FLOP/s of this machine in `dtype` (median of a few square torch.mm)."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    reps = 10 if device == "cuda" else 3

    def fn():
        for _ in range(reps):
            torch.mm(a, b)

    med, _ = _timed(fn, device, 3)
    return 2 * n ** 3 * reps / med


def run_case(case: Case) -> dict:
    """Measure one case in this process; returns a JSON-able dict."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = case.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.set_grad_enabled(False)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg, model, tok, gemma, vae = _parts(case.config, device, dtype)
    ds = 2 ** (len(CONFIGS[case.config][3]) - 1)
    lat = case.size // ds
    res = dict(asdict(case), name=case.name, dtype=str(dtype).replace("torch.", ""), tokens=(lat // cfg.patch_size) ** 2)
    # one evaluation's inputs: the doubled CFG batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, lat, lat, generator=g).to(device, dtype)
    t = torch.full((2,), 0.5, device=device)
    feats = torch.randn(2, 32, cfg.context_dim, generator=g).to(device, dtype)
    mask = torch.ones(2, 32, dtype=torch.bool, device=device)
    with torch.inference_mode():
        if case.impl == "lumina":
            pipe = _lumina(cfg, model, tok, gemma, vae)
            mode = case.mode
            kw = dict(steps=STEPS, solver="euler", cfg=CFG, height=case.size, width=case.size, seed=0,
                      output_type="pt", progress=False, context_drop=2 if "drop" in mode else 0,
                      cuda_graphs=None if "graphs" in mode else False)
            gen = lambda: pipe(PROMPT, **kw)  # noqa: E731
            step = lambda: model(x, t, feats, mask, base_seq_len=(cfg.sample_size // cfg.patch_size) ** 2)  # noqa: E731
        else:
            pipe, dmodel = _diffusers(cfg, model, tok, gemma, vae, device, dtype)
            del model
            from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

            table = get_2d_rotary_pos_embed_lumina(cfg.head_dim, 384, 384).to(device)
            kw = dict(num_inference_steps=STEPS, guidance_scale=CFG, height=case.size, width=case.size,
                      output_type="pt", clean_caption=False, generator=torch.Generator().manual_seed(0))
            gen = lambda: pipe(PROMPT, **kw)  # noqa: E731
            step = lambda: dmodel(x, t, feats, mask.long(), image_rotary_emb=table, cross_attention_kwargs={})  # noqa: E731
        gen()  # warm-up (and graph capture)
        res["generate_s"], res["generate_runs"] = _timed(gen, device, case.runs)
        if case.impl == "lumina":
            res["graphs"] = pipe.last_run.get("cuda_graphs")
            res["nfe"] = pipe.last_run.get("nfe")
        step()
        res["step_s"], _ = _timed(step, device, max(3, case.runs * 3))
        if case.impl == "lumina" and case.mode == "eager":
            counter = FlopCounterMode(display=False)
            with counter:
                step()
            res["step_flops"] = counter.get_total_flops()
    if device == "cuda":
        res["peak_bytes"] = torch.cuda.max_memory_allocated()
    else:
        res["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return res


# ------------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------------
def _cases(device: str, configs, runs: int, modes=None) -> list[Case]:
    out = []
    for config in configs:
        for size in CONFIGS[config][1]:
            for mode in modes or (CUDA_MODES if device == "cuda" else CPU_MODES):
                out.append(Case("lumina", config, size, mode, device, runs))
            out.append(Case("diffusers", config, size, "-", device, runs))
    return out


def _machine(device: str, commit: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None
    return (f"{time.strftime('%Y-%m-%d')}, commit {commit}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"{cpu} ({os.cpu_count()} CPUs){', ' + gpu if gpu else ''}")


def table(results: list[dict], rate: float, header: str) -> str:
    lines = [f"# End-to-end generation: lumina vs diffusers ({STEPS} evaluations with CFG)", "", header, "",
             f"dense matmul rate: {rate / 1e12:.2f} TFLOP/s", "",
             "| config | impl | mode | generate | x diffusers | x eager | floor | step | peak memory | graphs |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    by = {(r["config"], r["size"], r["impl"], r["mode"]): r for r in results if "generate_s" in r}
    for r in results:
        key = f"{r['config']} {r['size']}px"
        if "generate_s" not in r:
            lines.append(f"| {key} | {r['impl']} | {r['mode']} | {r.get('skipped', 'failed')} | | | | | | |")
            continue
        d = by.get((r["config"], r["size"], "diffusers", "-"))
        e = by.get((r["config"], r["size"], "lumina", "eager"))
        flops = (e or {}).get("step_flops")
        floor = f"{STEPS * flops / rate:.2f} s" if flops and rate else "-"
        xd = f"{d['generate_s'] / r['generate_s']:.2f}" if d and r["impl"] == "lumina" else "-"
        xe = f"{e['generate_s'] / r['generate_s']:.2f}" if e and r["impl"] == "lumina" else "-"
        graphs = r.get("graphs")
        graphs = (f"{graphs['graphs']} captured" if isinstance(graphs, dict) else "-" if graphs is None
                  else str(graphs)[:40])
        lines.append(f"| {key} | {r['impl']} | {r['mode']} | {r['generate_s']:.3f} s | {xd} | {xe} | {floor} | "
                     f"{r['step_s'] * 1e3:.1f} ms | {r['peak_bytes'] / 2**30:.2f} GiB | {graphs} |")
    return "\n".join(lines) + "\n"


def _unique(arg: str) -> list[str]:
    """A comma-separated option's items, each once, in order (`--configs mid,mid` runs, and lists, mid once)."""
    return list(dict.fromkeys(x.strip() for x in arg.split(",") if x.strip()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--configs", default=None, help="comma-separated of tiny, mid, 2B (default: cpu tiny,mid; cuda 2B)")
    p.add_argument("--sizes", default=None, help="comma-separated pixel sizes (default: the config's)")
    p.add_argument("--modes", default=None, help="lumina modes, comma-separated (default: all for the device)")
    p.add_argument("--no-diffusers", action="store_true", help="lumina only")
    p.add_argument("--runs", type=int, default=None, help="timed generate calls per case (default cpu 3, cuda 2)")
    p.add_argument("--deadline", type=float, default=None, help="start no case after this many seconds")
    p.add_argument("--results", default=None, help="write the table (and JSON) into this folder")
    p.add_argument("--out", default=None, help="write the table to this file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one case (JSON) in-process
    a = p.parse_args(argv)
    if a.one:
        print("E2E_RESULT " + json.dumps(run_case(Case(**json.loads(a.one)))), flush=True)
        return 0
    configs = _unique(a.configs) if a.configs else (["2B"] if a.device == "cuda" else ["tiny", "mid"])
    for c in configs:
        if c not in CONFIGS:
            p.error(f"--configs: unknown config {c!r}; expected some of {sorted(CONFIGS)}")
    runs = a.runs or (2 if a.device == "cuda" else 3)
    cases = _cases(a.device, configs, runs, _unique(a.modes) if a.modes else None)
    if a.sizes:
        keep = {int(s) for s in _unique(a.sizes)}
        cases = [c for c in cases if c.size in keep]
    if a.no_diffusers:
        cases = [c for c in cases if c.impl == "lumina"]
    import torch

    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    rate = matmul_rate(a.device, dtype)
    t0 = time.perf_counter()
    results = []
    for case in cases:
        if a.deadline is not None and time.perf_counter() - t0 > a.deadline:
            results.append(dict(asdict(case), name=case.name, skipped="skipped (deadline)"))
            continue
        print(f"[e2e] {case.name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--one", json.dumps(asdict(case))], cwd=ROOT,
                              capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("E2E_RESULT ")), None)
        if proc.returncode != 0 or line is None:
            err = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"[e2e] {case.name} failed: {err}", file=sys.stderr)
            results.append(dict(asdict(case), name=case.name, skipped=f"failed: {err[:60]}"))
            continue
        results.append(json.loads(line[len("E2E_RESULT "):]))
        r = results[-1]
        print(f"[e2e] {case.name}: generate {r['generate_s']:.3f} s, step {r['step_s'] * 1e3:.1f} ms",
              file=sys.stderr)
    head, dirty = run_commit({})  # this checkout's commit, "+dirty" with uncommitted changes
    commit = head + ("+dirty" if dirty else "")
    out = table(results, rate, _machine(a.device, commit))
    sys.stdout.write(out)
    if a.out:
        Path(a.out).write_text(out)
    if a.results:
        folder = Path(a.results)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y-%m-%d')}-{commit}-{a.device}-e2e"
        (folder / f"{stem}.md").write_text(out)
        (folder / f"{stem}.json").write_text(json.dumps(dict(matmul_rate=rate, results=results), indent=1))
        print(f"[e2e] wrote {folder / stem}.md", file=sys.stderr)
    return 0 if all("generate_s" in r or "deadline" in str(r.get("skipped")) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
