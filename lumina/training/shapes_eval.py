"""Prompt adherence of a shapes model: generate from held-out random captions, judge the pixels.

    python -m lumina.training.shapes_eval [--model DIR] [-n 100] [--seed 1] [--size 32] [--steps 30] ...

Prints the rates of :func:`lumina.training.shapes.adherence` (correct = shape colour and background colour
right; position and shape reported separately).
"""
from __future__ import annotations

import argparse
import json
import random

from .shapes import adherence, caption, random_spec


def evaluate(pipe, n: int = 100, seed: int = 1, size: int | None = None, batch: int = 50, **generate_kwargs) -> dict:
    """Generate `n` images for random specs (captions drawn with every template) and judge them."""
    rng = random.Random(seed)
    specs = [random_spec(rng) for _ in range(n)]
    prompts = [caption(s, rng) for s in specs]
    images = []
    for i in range(0, n, batch):
        images += pipe(prompts[i : i + batch], height=size, width=size, seed=seed + i, output_type="pt",
                       progress=False, **generate_kwargs)
    result = adherence(images, specs)
    result["prompts"] = prompts
    return result


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
    args = ap.parse_args(argv)
    pipe = load_pipeline(args.model)
    kw = {k: v for k, v in dict(steps=args.steps, cfg=args.cfg, solver=args.solver,
                                rope_scaling=args.rope_scaling).items() if v is not None}
    r = evaluate(pipe, n=args.n, seed=args.seed, size=args.size, **kw)
    print(json.dumps({k: r[k] for k in ("n", "correct", "background", "shape_color", "position", "shape")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
