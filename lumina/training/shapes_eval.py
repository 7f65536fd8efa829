"""Prompt adherence of a shapes model: generate from held-out random captions, judge the pixels.

    python -m lumina.training.shapes_eval [--model DIR] [-n 200] [--seed 1] [--size 32] [--steps 30] [--grid PNG] ...

Prints the rates of :func:`lumina.training.shapes.adherence` (correct = shape, shape colour and background colour
right; position reported apart). The held-out captions use every phrasing (:data:`~lumina.training.shapes.TEMPLATE_GROUPS`:
with and without a position and a background); each image is judged on what its caption names. ``--seed`` fixes
the specs, the phrasings and the sampling seeds, so a figure can be reproduced.
"""
from __future__ import annotations

import argparse
import json
import random

from .shapes import adherence, caption_and_fields, random_spec


def held_out(n: int, seed: int = 1) -> tuple[list[str], list[dict]]:
    """``n`` random captions of every phrasing and the fields each names (the judge's spec), fixed by ``seed``."""
    rng = random.Random(seed)
    pairs = [caption_and_fields(random_spec(rng), rng) for _ in range(n)]
    return [p for p, _ in pairs], [f for _, f in pairs]


def evaluate(pipe, n: int = 100, seed: int = 1, size: int | None = None, batch: int = 50, **generate_kwargs) -> dict:
    """Generate `n` images for :func:`held_out` captions and judge each on what its caption names."""
    prompts, specs = held_out(n, seed)
    images = []
    for i in range(0, n, batch):
        images += pipe(prompts[i : i + batch], height=size, width=size, seed=seed + i, output_type="pt",
                       progress=False, **generate_kwargs)
    result = adherence(images, specs)
    result["prompts"], result["images"] = prompts, images
    return result


def save_grid(result: dict, path, n: int = 24) -> None:
    """The first ``n`` images of an :func:`evaluate` result with their captions, marked right (green) or wrong."""
    from PIL import Image

    from .plots import sample_grid

    images = [Image.fromarray((im.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
              for im in result["images"][:n]]
    sample_grid(images, result["prompts"][:n], path, marks=[r["correct"] for r in result["results"][:n]])


def main(argv=None) -> int:
    from ..pipelines import load_pipeline

    ap = argparse.ArgumentParser(prog="python -m lumina.training.shapes_eval", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="pipeline directory (default: the bundled model)")
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=int, default=None, help="pixels (default: the training size)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--solver", default=None)
    ap.add_argument("--rope-scaling", default=None)
    ap.add_argument("--grid", default=None, help="also save the first 24 images with their captions as this PNG")
    args = ap.parse_args(argv)
    pipe = load_pipeline(args.model)
    kw = {k: v for k, v in dict(steps=args.steps, cfg=args.cfg, solver=args.solver,
                                rope_scaling=args.rope_scaling).items() if v is not None}
    r = evaluate(pipe, n=args.n, seed=args.seed, size=args.size, **kw)
    print(json.dumps({k: r[k] for k in ("n", "correct", "shape", "shape_color", "background", "position")}))
    if args.grid:
        save_grid(r, args.grid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
