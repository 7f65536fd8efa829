"""The `lumina` command line, one to one with the Python API.

    lumina generate [PROMPT ...] [--model DIR] [-o OUT] [options of the model's pipeline call]
    lumina train CONFIG.yaml [section.key=value ...]     (also under torchrun: python -m lumina.train)
    lumina info
"""
from __future__ import annotations

import argparse
import re
import sys
import warnings

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def _generate_parser(sub) -> None:
    from .models.rope import METHODS
    from .sampling import SCHEDULES, SOLVERS

    p = sub.add_parser("generate", help="generate with a model of any modality (lumina.generate)",
                       description="Generate images (PNG), sequences (WAV, NPY) or volumes (GIF, PNG, NPY) from "
                                   "text prompts with the model's pipeline.")
    p.add_argument("prompt", nargs="*", help="one or more prompts (a batch); none for an unconditional model")
    p.add_argument("--negative-prompt", default="", help="negative prompt for CFG (default: empty)")
    p.add_argument("--model", default=None,
                   help="pipeline directory (default: $LUMINA_MODEL, else the bundled model)")
    p.add_argument("--text-encoder", default=None, help="text encoder directory (default: MODEL/text_encoder)")
    p.add_argument("--vae", default=None, help="VAE directory, or 'pixel' (default: MODEL/vae)")
    p.add_argument("--lora", default=None, help="LoRA adapter directory merged into the transformer")
    p.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (default 1)")
    p.add_argument("--height", type=int, default=None, help="image pixels, a multiple of 16 (default: training size)")
    p.add_argument("--width", type=int, default=None, help="image pixels, a multiple of 16 (default: training size)")
    p.add_argument("--size", default=None, metavar="N[,N...]",
                   help="sample size per axis: image H,W; sequence T; volume F,H,W (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="solver steps (default 30)")
    p.add_argument("--solver", choices=sorted(SOLVERS), default=None, help="ODE solver (default midpoint)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default=None, help="time schedule (default uniform)")
    p.add_argument("--shift", type=float, default=None, help="rational time shift (default 4)")
    p.add_argument("--schedule-param", action="append", default=[], metavar="KEY=VALUE",
                   help="schedule parameter, repeatable (sigmoid: mu, alpha, beta)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default 4; 1 = off)")
    p.add_argument("--cfg-channels", type=int, default=None,
                   help="guide only the first K latent channels (3 = the official quirk)")
    p.add_argument("--cfg-renorm", type=float, default=None, help="renormalised CFG: max ||v|| / ||cond||")
    p.add_argument("--cfg-truncation", type=float, default=None, help="no guidance from this time on (0..1)")
    p.add_argument("--rope-scaling", choices=list(METHODS), default=None,
                   help="RoPE extrapolation above the training size (default time_aware)")
    p.add_argument("--scale-watershed", type=float, default=None, help="time_aware switch time (default 0.3)")
    p.add_argument("--no-proportional-attn", dest="proportional_attn", action="store_false", default=None,
                   help="turn proportional attention off")
    p.add_argument("--context-drop", default=None, metavar="SPEC",
                   help="merge attention keys/values at noisy steps: a factor (2) or "
                        "'factor=2,until=0.6,layers=2:-2,method=pool' ('off' = none; default: the model's)")
    p.add_argument("--cuda-graphs", choices=["auto", "on", "off"], default="auto",
                   help="replay each evaluation as a CUDA graph (auto: on for CUDA devices)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="run the transformer under torch.compile (default backend inductor)")
    p.add_argument("-n", "--num-images", type=int, default=1, help="samples (images) per prompt")
    p.add_argument("--seed", type=int, default=None, help="random seed (the same image on every device)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="transformer / text encoder dtype (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="official checkpoints: non-EMA weights")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("-o", "--output", default=None,
                   help="output path (image: .png; sequence: .wav or .npy; volume: .gif, .png or .npy); with several "
                        "samples, STEM_0.EXT, STEM_1.EXT, ... (default lumina.png / lumina.wav / lumina.gif)")


def _size(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"`--size` must be integers separated by commas (e.g. 64,64), got {text!r}") from None


def _schedule_params(items: list[str]) -> dict[str, float]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            params[key] = float(value)
        except ValueError:
            raise ValueError(f"`--schedule-param` must be KEY=NUMBER, got {item!r}") from None
    return params


def cmd_generate(args) -> int:
    import torch

    from . import pipelines
    from .pipelines.results import check_output

    schedule_params = _schedule_params(args.schedule_param)
    size = _size(args.size)
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    pipe = pipelines.load_pipeline(args.model, text_encoder=args.text_encoder, vae=args.vae, lora=args.lora,
                                   lora_scale=args.lora_scale, dtype=dtype, device=args.device, ema=args.ema)
    output = check_output(pipe.result_type, args.output or pipe.result_type.DEFAULT_NAME)
    kw = {}
    if pipe.modality == "image":
        kw.update(height=args.height, width=args.width, num_images_per_prompt=args.num_images)
    elif args.height is not None or args.width is not None:
        raise ValueError(f"`--height` / `--width` are for images; a {pipe.modality} model takes `--size`")
    else:
        kw.update(num_samples_per_prompt=args.num_images)
    if size is not None:
        kw["size"] = size
    result = pipe(
        args.prompt or None, args.negative_prompt, steps=args.steps, solver=args.solver, schedule=args.schedule,
        shift=args.shift, schedule_params=schedule_params, cfg=args.cfg, cfg_channels=args.cfg_channels,
        cfg_renorm=args.cfg_renorm, cfg_truncation=args.cfg_truncation, rope_scaling=args.rope_scaling,
        scale_watershed=args.scale_watershed, proportional_attn=args.proportional_attn,
        context_drop=args.context_drop, cuda_graphs={"auto": None, "on": True, "off": False}[args.cuda_graphs],
        compile=args.compile or False, seed=args.seed, progress=args.progress, **kw,
    )
    for path in result.save(output):
        print(path)
    return 0


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a Next-DiT (lumina.training)",
                       description="Train per a YAML config; run under torchrun for DDP / FSDP.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config values to replace")


def cmd_train(args) -> int:
    from .training import config as train_config
    from .training.trainer import train

    result = train(train_config.load(args.config, args.overrides))
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(result)
    return 0


def cmd_info(args) -> int:
    from lumina_kernels.info import main as info_main

    return info_main([]) or 0


# argument names of the Python API that the generate options carry under other names
_API_NAMES = {"cfg_scale": "--cfg", "channels": "--cfg-channels", "renorm": "--cfg-renorm",
              "truncation": "--cfg-truncation", "num_images_per_prompt": "-n", "num_samples_per_prompt": "-n",
              "lora_scale": "--lora-scale", "path": "--output", "output": "--output"}


def _cli_message(message: str, parser: argparse.ArgumentParser) -> str:
    """An API error message with `argument` names replaced by the CLI's option names (`--cfg`, not `cfg_scale`)."""
    names = dict(_API_NAMES)
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in names:
            names[action.dest] = longs[0]
    return re.sub(r"`([a-z_]+)`", lambda m: f"`{names[m.group(1)]}`" if m.group(1) in names else m.group(0), message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lumina", description="Lumina-Next (Next-DiT)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    _train_parser(sub)
    sub.add_parser("info", help="build and kernel information")
    for name, sp in sub.choices.items():  # --debug after the command too
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not args.debug:  # one line per warning, as for errors
                warnings.showwarning = lambda message, *a, **k: print(
                    f"lumina {args.command}: warning: {' '.join(str(message).split())}", file=sys.stderr)
            return {"generate": cmd_generate, "train": cmd_train, "info": cmd_info}[args.command](args)
    except KeyboardInterrupt:
        print(f"lumina {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, no traceback (--debug shows it)
        if args.debug:
            raise
        kind = "" if isinstance(e, (ValueError, FileNotFoundError)) else f"{type(e).__name__}: "
        sub_parser = sub.choices[args.command]
        text = " ".join(str(e).split()) or type(e).__name__
        print(f"lumina {args.command}: error: {kind}{_cli_message(text, sub_parser)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
