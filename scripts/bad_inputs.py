"""Replay a corpus of bad, odd and hostile inputs and count the outcomes.

    python scripts/bad_inputs.py            # about 300 cases: the Python API, the kernels, training configs, files
    python scripts/bad_inputs.py --cli      # + the command line through subprocesses (slower)
    python scripts/bad_inputs.py --list     # every case and its outcome

Outcomes: ``named`` (an error whose message names the argument, key or file the case broke), ``unclear`` (an error
that does not name it, or a raw exception type such as IndexError / KeyError / TypeError from inside), ``silent``
(no error at all: the value was accepted), ``hang`` (no answer within the timeout) and ``crash`` (the process died).
Cases run one after another in a worker process that the parent restarts after a hang or a crash, so one bad case
never hides the others. Everything is built in code (tiny random models): nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAMED_TYPES = ("ValueError", "FileNotFoundError", "ConfigError", "CheckpointError", "MemoryEstimateError",
               "NonFiniteError", "NotADirectoryError")
TIMEOUT_S = 60.0


# ------------------------------------------------------------------------------------------------
# the corpus: (group, what it breaks, the word the error must name, a callable taking the fixtures)
# ------------------------------------------------------------------------------------------------
def corpus() -> list[tuple[str, str, str, object]]:
    import torch

    cases = []

    def add(group, label, name, fn):
        cases.append((group, label, name, fn))

    nan, inf = float("nan"), float("inf")
    # pipeline call arguments
    bad_call = {
        "steps": [0, -1, 1.5, "3", nan, None and 0],
        "cfg": [-1.0, nan, inf, "x", True],
        "height": [0, 7, -16, "64", 1.5, 10 ** 9],
        "width": [0, 30, -32],
        "solver": ["heun", 3, ""],
        "schedule": ["cosine", None and "x", 5],
        "shift": [0.0, -1.0, nan, "4"],
        "cfg_channels": [0, -1, 99, 1.5],
        "cfg_renorm": [0.0, -1.0, nan],
        "cfg_truncation": [-0.5, 2.0, nan],
        "rope_scaling": ["bogus", 1],
        "scale_watershed": [-0.1, 2.0, nan],
        "context_drop": ["factor=2,factor=3", "factor=0", "until=2", "layers=5:9", "method=magic", "zz", -2, 2.5,
                         "factor=2,start=0.9,until=0.1"],
        "num_images_per_prompt": [0, -1, 1.5, True],
        "output_type": ["np", 3],
        "compile": ["no_such_backend", 3],
        "cuda_graphs": ["yes", 2],
        "schedule_params": [{"mu": "x"}, {"bogus": 1.0}],
        "seed": ["abc", 1.5],
        "size": [(8, 8, 8), "8"],
    }
    for arg, values in bad_call.items():
        for v in values:
            if v is None:
                continue
            name = {"schedule_params": "schedule"}.get(arg, arg) if v != 10 ** 9 else "needs about"
            add("pipeline", f"{arg}={v!r}", name,
                lambda fx, a=arg, v=v: fx["pipe"]("a", progress=False, **{"steps": 1, a: v}))
    for prompt in (None, 3, [], [1, 2]):  # ("" is a valid prompt: the unconditional branch)
        add("pipeline", f"prompt={prompt!r}", "prompt", lambda fx, p=prompt: fx["pipe"](p, steps=1, progress=False))
    add("pipeline", "negative_prompt count", "negative_prompt",
        lambda fx: fx["pipe"](["a", "b"], ["x", "y", "z"], steps=1, progress=False))
    add("pipeline", "seed and generator", "generator",
        lambda fx: fx["pipe"]("a", steps=1, seed=1, generator=torch.Generator(), progress=False))

    # loading
    add("loading", "device foo", "device", lambda fx: _load(fx, device="foo"))
    add("loading", "device cuda:7", "device", lambda fx: _load(fx, device="cuda:7"))
    add("loading", "model missing", "does not exist", lambda fx: _load(fx, model=fx["tmp"] / "nope"))
    add("loading", "model is a file", "is a file", lambda fx: _load(fx, model=fx["file"]))
    add("loading", "lora scale nan", "lora_scale", lambda fx: _load(fx, lora=fx["tmp"], lora_scale=nan))
    add("loading", "lora dir missing", "lora", lambda fx: _load(fx, lora=fx["tmp"] / "nolora"))
    add("loading", "vae missing", "VAE", lambda fx: _load(fx, vae=fx["tmp"] / "novae"))
    add("loading", "text encoder missing", "text encoder", lambda fx: _load(fx, text_encoder=fx["tmp"] / "none"))
    for label, text in [("invalid JSON", "{not json"), ("a list", "[1, 2]"), ("a string", '"x"'),
                        ("unknown key", '{"bogus": 1}'), ("steps a string", '{"defaults": {"steps": "x"}}'),
                        ("size fractional", '{"defaults": {"size": [1.5, 2]}}'),
                        ("codec bogus", '{"codec": "magic"}'), ("defaults a list", '{"defaults": [1]}')]:
        add("files", f"lumina_pipeline.json: {label}", "lumina_pipeline.json",
            lambda fx, t=text: _load(fx, model=_pipe_with(fx, "lumina_pipeline.json", t)))
    for label, cut in [("truncated", 64), ("empty", 0), ("garbage", -1)]:
        add("files", f"model_ema.safetensors {label}", "model_ema.safetensors",
            lambda fx, c=cut: _load(fx, model=_pipe_with_weights(fx, c)))
    for label, text in [("invalid JSON", "{"), ("a list", "[]"), ("n_layers -1", None), ("n_layers 1.5", None)]:
        add("files", f"transformer config.json: {label}", "config.json" if text is not None else "n_layers",
            lambda fx, t=text, lab=label: _load(fx, model=_pipe_with_config(fx, t, lab)))

    # kernels
    import lumina_kernels as lk

    x = torch.randn(2, 8, 4, 16)
    w = torch.ones(16)
    kernel = [
        ("rms_norm x int", "x", lambda: lk.rms_norm(x.long(), w)),
        ("rms_norm weight shape", "weight", lambda: lk.rms_norm(x, torch.ones(15))),
        ("rms_norm eps nan", "eps", lambda: lk.rms_norm(x, w, eps=nan)),
        ("rms_norm eps negative", "eps", lambda: lk.rms_norm(x, w, eps=-1.0)),
        ("rms_norm x list", "x", lambda: lk.rms_norm([1.0], w)),
        ("rope table real", "freqs", lambda: lk.apply_rope(x, torch.ones(8, 8))),
        ("rope table shape", "freqs", lambda: lk.apply_rope(x, torch.ones(7, 8, dtype=torch.complex64))),
        ("rope odd head dim", "head", lambda: lk.apply_rope(torch.randn(2, 8, 4, 15),
                                                              torch.ones(8, 7, dtype=torch.complex64))),
        ("attention 3-D q", "q", lambda: lk.attention(x[0], x, x)),
        ("attention k dtype", "k", lambda: lk.attention(x, x.double(), x)),
        ("attention heads", "heads", lambda: lk.attention(x, x[:, :, :3], x[:, :, :3])),
        ("attention mask dtype", "key_padding_mask", lambda: lk.attention(x, x, x, key_padding_mask=torch.ones(2, 8))),
        ("attention mask shape", "key_padding_mask",
         lambda: lk.attention(x, x, x, key_padding_mask=torch.ones(2, 7, dtype=torch.bool))),
        ("attention scale nan", "softmax_scale", lambda: lk.attention(x, x, x, softmax_scale=nan)),
        ("attention v shape", "v", lambda: lk.attention(x, x, x[:, :7])),
        ("merge grid mismatch", "grid", lambda: lk.merge_tokens(x[:, :, 0], (3, 3), 2)),
        ("merge factor 0", "factor", lambda: lk.merge_tokens(x[:, :, 0], (2, 4), 0)),
        ("merge cells range", "cells", lambda: lk.merge_tokens(x[:, :, 0], cells=torch.full((8,), 9), n_cells=3)),
        ("solver coeffs count", "coeffs", lambda: lk.solver_update(x, [x], [1.0, 2.0], 0.1)),
        ("solver h nan", "h", lambda: lk.solver_update(x, [x], [1.0], nan)),
        ("solver ks shape", "ks", lambda: lk.solver_update(x, [x[0]], [1.0], 0.1)),
        ("cfg_combine scale nan", "scale", lambda: lk.cfg_combine(x, x, nan)),
        ("cfg_combine shapes", "uncond", lambda: lk.cfg_combine(x, x[0], 2.0)),
        ("cfg_combine channels 0", "channels", lambda: lk.cfg_combine(x, x, 2.0, channels=0)),
    ]
    for label, name, fn in kernel:
        add("kernels", label, name, lambda fx, f=fn: f())
    for label, fn in [("rms_norm", lambda t: lk.rms_norm(t, torch.ones(16))),
                      ("attention", lambda t: lk.attention(t, t, t)),
                      ("merge_tokens", lambda t: lk.merge_tokens(t[:, :, 0], (2, 4), 2)[0])]:
        add("kernels", f"{label} double backward", "double backward", lambda fx, f=fn: _double_backward(f))
    add("kernels", "attention NaN in q is propagated", "NaN", lambda fx: _nan_attention())

    # training configs
    bad_cfg = {
        "train.steps": [0, -1, 1.5, "8", [1]], "train.lr": [-1.0, 0.0, nan, inf], "train.batch_size": [0, "8"],
        "train.ema_decay": [1.0, -0.1], "train.t_sampling": ["cosine"], "train.t_shift": [0.0, -1.0],
        "train.precision": ["fp8"], "train.parallel": ["tp"], "train.keep_last": [0], "train.betas": [[0.9], 0.9],
        "train.clean_prefix": [-1], "train.stpes": [3], "data.resolution": [0, 1, 100000], "data.shapes": [0],
        "data.buckets": ["round"], "data.num_workers": [-1], "model.preset": ["NextDiT_huge"],
        "model.modality": ["smell"], "model.max_length": [0], "model.overrides": [{"n_layers": -1},
                                                                                  {"n_layers": 1.5}, {"bogus": 1}],
        "lora.rank": [0], "lora.alpha": [0.0], "lora.target_modules": [[]],
    }
    for key, values in bad_cfg.items():
        for v in values:
            add("training", f"{key}={v!r}", key.split(".")[-1] if key != "train.stpes" else "stpes",
                lambda fx, k=key, v=v: _train(fx, k, v))
    add("training", "data source missing", "source", lambda fx: _train(fx, "data.source", str(fx["tmp"] / "no")))
    add("training", "data: every image unreadable", "none of the", lambda fx: _train_unreadable(fx))
    add("training", "config not a mapping", "mapping", lambda fx: __import__("lumina.training.config",
                                                                            fromlist=["x"]).from_dict([1]))
    return cases


# ------------------------------------------------------------------------------------------------
# helpers the cases call (run in the worker)
# ------------------------------------------------------------------------------------------------
def _load(fx, model=None, **kw):
    from lumina.pipelines import load_pipeline

    return load_pipeline(model or fx["pipe_dir"], cache=False, device=kw.pop("device", "cpu"), **kw)


def _copy(fx) -> Path:
    import shutil

    dst = Path(tempfile.mkdtemp(dir=fx["tmp"])) / "p"
    shutil.copytree(fx["pipe_dir"], dst)
    return dst


def _pipe_with(fx, name: str, text: str) -> Path:
    d = _copy(fx)
    (d / name).write_text(text)
    return d


def _pipe_with_weights(fx, cut: int) -> Path:
    d = _copy(fx)
    w = d / "transformer" / "model_ema.safetensors"
    w.write_bytes(b"\x00garbage\xff" * 10 if cut < 0 else w.read_bytes()[:cut])
    return d


def _pipe_with_config(fx, text, label) -> Path:
    d = _copy(fx)
    f = d / "transformer" / "config.json"
    if text is not None:
        f.write_text(text)
    else:
        meta = json.loads(f.read_text())
        meta["config"]["n_layers"] = -1 if "-1" in label else 1.5
        f.write_text(json.dumps(meta))
    return d


def _double_backward(fn):
    import torch

    x = torch.randn(2, 8, 4, 16, requires_grad=True)
    (g,) = torch.autograd.grad((fn(x) ** 2).sum(), x, create_graph=True)
    return g


def _nan_attention():
    import torch

    import lumina_kernels as lk

    q = torch.randn(1, 8, 2, 16)
    q[0, 3, 0, 0] = float("nan")
    out = lk.attention(q, torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16))
    if bool(torch.isfinite(out[0, 3, 0]).all()):
        return "hidden"  # silent: a finite row in place of NaN
    raise ValueError("NaN propagated (as the reference)")


def _train(fx, key: str, value):
    from lumina.training import config as C
    from lumina.training.trainer import Trainer

    d = json.loads(json.dumps(fx["train_cfg"]))
    section, _, name = key.partition(".")
    if section == "model" and name == "overrides":
        d["model"]["overrides"] = {**d["model"]["overrides"], **value}
    else:
        d[section] = {**(d.get(section) or {}), name: value}
        if key == "data.source":
            d["data"].pop("shapes")
    d["train"]["out_dir"] = tempfile.mkdtemp(dir=fx["tmp"])
    return Trainer(C.from_dict(d))


def _train_unreadable(fx):
    from lumina.training import config as C
    from lumina.training.trainer import Trainer

    src = Path(tempfile.mkdtemp(dir=fx["tmp"]))
    for i in range(3):
        (src / f"{i}.png").write_bytes(b"nope")
        (src / f"{i}.txt").write_text("a")
    d = json.loads(json.dumps(fx["train_cfg"]))
    d["data"] = {"source": str(src), "resolution": 8, "buckets": "square"}
    d["train"]["out_dir"] = tempfile.mkdtemp(dir=fx["tmp"])
    return Trainer(C.from_dict(d)).train()


def fixtures(tmp: Path) -> dict:
    from lumina.pipelines import LuminaPipeline
    from lumina.pipelines.tiny import build_tiny_gemma, build_tiny_pipeline

    pipe_dir = build_tiny_pipeline(tmp / "pipe")
    gemma = build_tiny_gemma(tmp / "gemma")
    f = tmp / "a_file"
    f.write_text("x")
    train_cfg = {"model": {"preset": "NextDiT_tiny", "overrides": {"dim": 32, "n_layers": 1, "n_heads": 2,
                                                                    "patch_size": 2, "learn_sigma": False},
                           "text_encoder": str(gemma), "text_layer": -2, "max_length": 16, "codec": "pixel"},
                 "data": {"shapes": 4, "resolution": 8, "buckets": "square"},
                 "train": {"steps": 1, "batch_size": 2, "progress": False}}
    return {"tmp": tmp, "pipe_dir": pipe_dir, "file": f, "train_cfg": train_cfg,
            "pipe": LuminaPipeline.from_pretrained(pipe_dir, device="cpu")}


def classify(name: str, fn, fx) -> tuple[str, str]:
    try:
        result = fn(fx)
    except Exception as e:  # noqa: BLE001 - every exception is an outcome here
        msg = " ".join(str(e).split())
        kind = type(e).__name__
        if (kind in NAMED_TYPES or isinstance(e, ValueError)) and name.lower() in msg.lower():
            return "named", f"{kind}: {msg[:160]}"
        if kind == "RuntimeError" and name.lower() in msg.lower() and "double backward" in name:
            return "named", f"{kind}: {msg[:160]}"
        return "unclear", f"{kind}: {msg[:160]}"
    return "silent", f"accepted ({type(result).__name__})"


# ------------------------------------------------------------------------------------------------
# worker and parent
# ------------------------------------------------------------------------------------------------
def worker(start: int) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    cases = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        fx = fixtures(Path(tmp))
        for i in range(start, len(cases)):
            group, label, name, fn = cases[i]
            print(json.dumps({"i": i, "start": True}), flush=True)
            outcome, detail = classify(name, fn, fx)
            print(json.dumps({"i": i, "group": group, "label": label, "outcome": outcome, "detail": detail}),
                  flush=True)


def run_api() -> list[dict]:
    results: list[dict] = []
    start = 0
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               LUMINA_TEST_QUIET="1")
    while True:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(start)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        current, last = None, time.time()
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        done = False
        while True:
            ready = sel.select(timeout=1.0)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                rec = json.loads(line)
                if rec.get("start"):
                    current, last = rec["i"], time.time()
                else:
                    results.append(rec)
                    current = None
            elif current is not None and time.time() - last > TIMEOUT_S:
                proc.kill()
                results.append({"i": current, "group": "?", "label": f"case {current}", "outcome": "hang",
                                "detail": f"no answer in {TIMEOUT_S:g} s"})
                break
        proc.wait()
        if current is not None and not any(r["i"] == current for r in results):
            results.append({"i": current, "group": "?", "label": f"case {current}", "outcome": "crash",
                            "detail": f"the worker died (exit {proc.returncode})"})
        if current is None:
            done = True
        if done:
            return results
        start = current + 1


CLI_CASES = [
    (["generate", "a", "--cfg", "-1"], "--cfg"), (["generate", "a", "--steps", "0"], "--steps"),
    (["generate", "a", "--device", "foo"], "--device"), (["generate", "a", "--compile", "nope"], "--compile"),
    (["generate", "a", "--context-drop", "factor=2,factor=3"], "twice"),
    (["generate", "a", "--height", "30"], "--height"), (["generate", "a", "-o", "x.txt"], ".png"),
    (["generate", "a", "--size", "a,b"], "--size"), (["generate", "a", "--lora-scale", "nan", "--lora", "."],
                                                     "--lora-scale"),
    (["generate", "a", "--model", "/nonexistent"], "does not exist"),
    (["train", "/nonexistent.yaml"], "does not exist"),
    (["train", str(REPO / "configs" / "tiny_shapes.yaml"), "train.steps=0"], "train.steps"),
    (["train", str(REPO / "configs" / "tiny_shapes.yaml"), "data.resolution=100000"], "data.resolution"),
]


def run_cli(model: Path) -> list[dict]:
    out = []
    for i, (args, name) in enumerate(CLI_CASES):
        if args[0] == "generate" and "--model" not in args:
            args = [*args, "--model", str(model), "--no-progress", *([] if "--steps" in args else ["--steps", "1"])]
        try:
            r = subprocess.run([sys.executable, "-m", "lumina", *args], capture_output=True, text=True,
                               timeout=TIMEOUT_S * 3, cwd=tempfile.gettempdir(),
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
        except subprocess.TimeoutExpired:
            out.append({"i": i, "group": "cli", "label": " ".join(args[:4]), "outcome": "hang", "detail": ""})
            continue
        err = [ln for ln in r.stderr.splitlines() if ln.strip() and "it/s]" not in ln]
        if r.returncode < 0:
            outcome = "crash"
        elif r.returncode == 0:
            outcome = "silent"
        elif "Traceback" in r.stderr or not err or name not in err[-1]:
            outcome = "unclear"
        else:
            outcome = "named"
        out.append({"i": i, "group": "cli", "label": " ".join(args[:4]), "outcome": outcome,
                    "detail": err[-1][:160] if err else ""})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cli", action="store_true", help="also run the command-line cases (subprocesses)")
    ap.add_argument("--list", action="store_true", help="print every case and its outcome")
    a = ap.parse_args(argv)
    if a.worker is not None:
        worker(a.worker)
        return 0
    t0 = time.time()
    results = run_api()
    if a.cli:
        with tempfile.TemporaryDirectory() as tmp:
            from lumina.pipelines.tiny import build_tiny_pipeline

            results += run_cli(build_tiny_pipeline(Path(tmp) / "pipe"))
    outcomes = ["named", "unclear", "silent", "hang", "crash"]
    groups = sorted({r["group"] for r in results})
    print(f"# bad inputs: {len(results)} cases in {time.time() - t0:.0f} s\n")
    print("| group | " + " | ".join(outcomes) + " |")
    print("| --- |" + " ---: |" * len(outcomes))
    for g in groups + ["all"]:
        rs = [r for r in results if g in ("all", r["group"])]
        print(f"| {g} | " + " | ".join(str(sum(r["outcome"] == o for r in rs)) for o in outcomes) + " |")
    bad = [r for r in results if r["outcome"] != "named" or a.list]
    if bad:
        print("\n| group | case | outcome | detail |\n| --- | --- | --- | --- |")
        for r in bad:
            print(f"| {r['group']} | {r['label']} | {r['outcome']} | {r['detail'].replace('|', '/')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
