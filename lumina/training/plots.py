"""PNG pictures of a training run with PIL alone: the loss curve of ``loss.csv`` and a captioned grid of samples.

    python -m lumina.training.plots RUN_DIR/loss.csv -o loss.png [--title TEXT]

(The sample grid: ``python -m lumina.training.shapes_eval --grid grid.png``.)
"""
from __future__ import annotations

import argparse
import math
import textwrap
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .checkpointing import read_log

__all__ = ["read_loss", "loss_curve", "sample_grid"]


def read_loss(path) -> tuple[list[int], list[float]]:
    """(steps, losses) of a trainer's ``loss.csv`` (:func:`~lumina.training.checkpointing.read_log`: a step logged
    twice by a resumed run keeps its last row)."""
    rows = read_log(path)
    if not rows:
        raise ValueError(f"{path}: no loss rows")
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def loss_curve(csv_path, png_path, title: str = "training loss", size: tuple[int, int] = (640, 360)) -> Path:
    """The loss per step (grey) and its running mean over 1% of the steps (blue), log-scaled, as a PNG."""
    steps, losses = read_loss(csv_path)
    if any(not (v > 0 and math.isfinite(v)) for v in losses):
        raise ValueError(f"{csv_path}: a loss that is not a positive finite number cannot be drawn on a log scale")
    W, H = size
    left, right, top, bottom = 60, 20, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lo, hi = math.log10(min(losses)), math.log10(max(losses))
    lo, hi = math.floor(lo * 2) / 2, math.ceil(hi * 2) / 2 + (1e-9 if hi == lo else 0)

    def xy(step: float, loss: float) -> tuple[float, float]:
        x = left + (step - steps[0]) / max(steps[-1] - steps[0], 1) * (W - left - right)
        return x, top + (hi - math.log10(loss)) / (hi - lo) * (H - top - bottom)

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(int(lo * 2), int(math.ceil(hi * 2)) + 1):  # gridlines at 1, 3.16, 10 ... x 10^n
        v = 10 ** (k / 2)
        _, y = xy(steps[0], v)
        d.line([left, y, W - right, y], fill=(225, 225, 225))
        d.text((4, y - 6), f"{v:.3g}", fill="black", font=font)
    for frac in (0, 0.25, 0.5, 0.75, 1):
        s = steps[0] + frac * (steps[-1] - steps[0])
        x, _ = xy(s, 10 ** lo)
        d.text((x - 12, H - bottom + 6), f"{int(s)}", fill="black", font=font)
    d.line([xy(s, v) for s, v in zip(steps, losses)], fill=(180, 180, 180))
    smooth = _smooth(losses, max(1, len(losses) // 100))
    d.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(30, 60, 200), width=2)
    d.text((left, 8), f"{title}: {losses[0]:.3g} -> {smooth[-1]:.3g} "
                      f"(mean of the last 1%) over {steps[-1]} steps", fill="black", font=font)
    d.text((W // 2 - 10, H - 18), "step", fill="black", font=font)
    img.save(png_path)
    return Path(png_path)


def sample_grid(images: Sequence[Image.Image], captions: Sequence[str], png_path, cols: int = 6, cell: int = 128,
                marks: Sequence[bool | None] | None = None) -> Path:
    """Images scaled to ``cell`` pixels (nearest: the pixels as generated), each over its wrapped caption; a mark
    per image when ``marks`` is given (green: the judge says right, red: wrong)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    font = ImageFont.load_default()
    lines = [textwrap.wrap(c, width=max(8, cell // 6))[:3] for c in captions]
    text_h = 12 * max((len(x) for x in lines), default=1) + 4
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * (cell + 4), rows * (cell + text_h + 4)), "white")
    d = ImageDraw.Draw(grid)
    for i, (im, text) in enumerate(zip(images, lines)):
        x, y = (i % cols) * (cell + 4) + 2, (i // cols) * (cell + text_h + 4) + 2
        grid.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (x, y))
        if marks is not None and marks[i] is not None:
            d.rectangle([x + cell - 10, y + 2, x + cell - 3, y + 9], fill=(0, 170, 0) if marks[i] else (220, 0, 0),
                        outline="white")
        for j, line in enumerate(text):
            d.text((x, y + cell + 2 + 12 * j), line, fill="black", font=font)
    grid.save(png_path)
    return Path(png_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lumina.training.plots", description="the loss curve of a run as a PNG")
    ap.add_argument("csv", help="a run's loss.csv")
    ap.add_argument("-o", "--output", required=True, help="PNG path")
    ap.add_argument("--title", default="training loss")
    args = ap.parse_args(argv)
    print(loss_curve(args.csv, args.output, title=args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
