"""Image fidelity of faster sampling: context drop and fewer steps against a 250-step reference.

    python benchmarks/fidelity.py [--model DIR] [--size 64] [--images 4] [--out fidelity.md]

For a fixed model, prompts and seeds, every configuration below generates the same batch of images, which are
compared with the reference (the same model, midpoint, 250 steps, no context drop) by PSNR and SSIM in pixel space
(images in [0, 1]; SSIM: 11x11 Gaussian window, sigma 1.5, on each channel, averaged) and by PSNR of the final
latents (scaled by the reference latents' range). Wall time is the sampling call's, on the chosen device.

Model: by default the bundled default model (lumina/assets/default_model: a *trained* 6.9M-parameter pixel-space
Next-DiT, 32x32 RGB training size, patch 4), so the numbers describe a real learnt flow, not random weights; at
``--size 64`` (the default) it runs at 2x its training size (16x16 patch grid, time-aware RoPE scaling), where
merging has cells to merge. ``--model`` takes any pipeline directory.

Configurations (all with the pipeline's guidance, shift and RoPE defaults): midpoint 30 steps (the default), 15 and
10 steps, euler 30 steps; context drop at 30 midpoint steps: pool factor 2 (default schedule t < 0.6, every layer),
pool factor 2 until 0.3, pool factor 4, pool factor 2 skipping the first and last layer, tome factor 2.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# in the bundled model's vocabulary (3 shapes, 8 colours, 5 positions), with and without a background and position
PROMPTS = ["a red circle on a blue background", "a blue square", "a yellow triangle on a purple background",
           "a white square at the top left on a black background", "an orange circle", "a red triangle at the right",
           "a black square on a yellow background", "a purple circle on a white background"]

CONFIGS = [
    ("midpoint 30", dict(steps=30, solver="midpoint")),
    ("midpoint 15", dict(steps=15, solver="midpoint")),
    ("midpoint 10", dict(steps=10, solver="midpoint")),
    ("euler 30", dict(steps=30, solver="euler")),
    ("drop pool k2", dict(steps=30, solver="midpoint", context_drop="factor=2")),
    ("drop pool k2 until .3", dict(steps=30, solver="midpoint", context_drop="factor=2,until=0.3")),
    ("drop pool k4", dict(steps=30, solver="midpoint", context_drop="factor=4")),
    ("drop pool k2 layers 1:-1", dict(steps=30, solver="midpoint", context_drop="factor=2,layers=1:-1")),
    ("drop tome k2", dict(steps=30, solver="midpoint", context_drop="factor=2,method=tome")),
]


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> float:
    """Mean over the batch of 10 log10(peak^2 / MSE) (inf for identical images)."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    vals = [math.inf if m == 0 else 10 * math.log10(peak ** 2 / float(m)) for m in mse]
    return sum(vals) / len(vals)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) of (B, C, H, W) images in [0, 1]; Gaussian window, valid region only."""
    a, b = a.double(), b.double()
    C = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(C, 1, window, window)  # (C, 1, w, w) depthwise

    def filt(z):
        return F.conv2d(z, k, groups=C)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def run(model=None, size: int = 64, images: int = 4, ref_steps: int = 250, device: str = "cpu", seed: int = 0,
        configs=None, progress: bool = True):
    """Rows of (name, nfe, seconds, pixel PSNR, pixel SSIM, latent PSNR) and the reference's (steps, seconds)."""
    import lumina

    pipe = lumina.load_pipeline(model, device=device, cache=False)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(images)]
    common = dict(height=size, width=size, seed=seed, output_type="latent", progress=False)

    def gen(**kw):
        t0 = time.perf_counter()
        with torch.inference_mode():
            lat = pipe(prompts, **common, **kw)
            if pipe.device.type == "cuda":
                torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        with torch.inference_mode():
            img = pipe.codec.decode(lat.float()).cpu()
        return lat.float().cpu(), img, dt, pipe.last_run["nfe"]

    ref_lat, ref_img, ref_t, _ = gen(steps=ref_steps, solver="midpoint")
    span = float(ref_lat.max() - ref_lat.min())
    rows = []
    for name, kw in (configs or CONFIGS):
        lat, img, dt, nfe = gen(**kw)
        rows.append((name, nfe, dt, psnr(img, ref_img), ssim(img, ref_img), psnr(lat, ref_lat, peak=span)))
        if progress:
            print(f"  {name}: {rows[-1][3]:.2f} dB", file=sys.stderr)
    return rows, (ref_steps, ref_t), pipe


def table(rows, ref, pipe, size: int, images: int) -> str:
    steps, ref_t = ref
    cfg = pipe.transformer.config
    lines = [
        f"model: {cfg.name} (dim {cfg.dim}, {cfg.n_layers} layers, patch {cfg.patch_size}), {size}x{size}, "
        f"{images} images, device {pipe.device.type}; reference: midpoint {steps} steps ({ref_t:.2f} s)",
        "",
        "| config | evaluations | time | x faster | pixel PSNR (dB) | pixel SSIM | latent PSNR (dB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = rows[0][2] if rows else None
    for name, nfe, dt, p, s, lp in rows:
        lines.append(f"| {name} | {nfe} | {dt:.2f} s | {base / dt:.2f} | {p:.2f} | {s:.4f} | {lp:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="pipeline directory (default: the bundled trained model)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels (default 64: 2x training size)")
    p.add_argument("--images", type=int, default=4, help="images (prompts x seeds) per configuration")
    p.add_argument("--ref-steps", type=int, default=250, help="midpoint steps of the reference (default 250)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", action="append", default=None, help="run only configs whose name contains this")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    a = p.parse_args(argv)
    configs = [c for c in CONFIGS if not a.only or any(o in c[0] for o in a.only)]
    rows, ref, pipe = run(a.model, a.size, a.images, a.ref_steps, a.device, a.seed, configs)
    out = table(rows, ref, pipe, a.size, a.images)
    sys.stdout.write(out)
    if a.out:
        Path(a.out).write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
