"""Turn a pytest-benchmark JSON of benchmarks/bench_kernels.py into a markdown table.

    python benchmarks/summarize.py bench.json [--device cuda] [--out summary.md]
    python benchmarks/summarize.py bench.json --results benchmarks/results [--name kernels] [--note "..."]

One row per benchmark, grouped by (op, pass, device, dtype, shape): implementation, timing mode,
median time, GB/s (bytes of the op's byte model over the median), TFLOP/s (useful FLOPs over the
median, where the benchmark counts them), % of the GB/s of the `copy` benchmark in the same group (a
device-to-device copy of the same bytes, measured in the same run; "-" where the group has none,
e.g. on CPU), speed-up over the reference (x ref) and, for lumina's rows, over the fastest peer of the
group (x peer: benchmarks with extra_info["peer"], e.g. each torch SDPA backend, liger-kernel, flash-attn-4),
and % gemm: the row's TFLOP/s over that of the group's `gemm` benchmark (the dtype's dense matmul rate
measured in the same run; attention groups and the end-to-end groups have one).

--results DIR writes DIR/<YYYY-MM-DD>-<commit>-<device>-<name>.md: a header (machine: CPU and GPU,
torch, CUDA, commit with "+dirty" for a tree with uncommitted changes, date, threads, an optional
--note) and the table; and copies the JSON beside it with the same stem (.json) for
benchmarks/compare.py. The date, commit and machine are those of the run (the JSON's datetime,
commit_info and machine_info); the commit falls back to `git rev-parse --short HEAD` of this checkout
where the JSON has none. <device> is "cpu" or the GPU's name (lower case, e.g. "nvidia-h200"), <name>
--name or the JSON file's stem. The path written is printed on stderr.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import pathlib
import re
import shutil
import subprocess
import sys

IMPL_ORDER = {"copy": 0, "gemm": 0, "lumina": 1, "lumina-eager": 2, "compiled": 3, "reference": 4,
              "eager": 5, "graphs": 6, "drop": 7, "drop+graphs": 8}


def _time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.3f} s"


def _group_key(group: str) -> tuple:
    # "op pass device dtype shape": device first, then op, pass, dtype, shape
    parts = group.split()
    if len(parts) == 5:
        op, pass_, device, dtype, shape = parts
        return (device, op, pass_, dtype, shape)
    return (group,)


def summarize(data: dict, device: str | None = None, header: bool = True) -> str:
    groups: dict[str, list[dict]] = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if device and info.get("device") != device:
            continue
        groups.setdefault(b.get("group") or b["name"], []).append(b)
    if not groups:
        return "(no benchmarks" + (f" on {device}" if device else "") + " in this file)\n"

    lines = []
    mi = data.get("machine_info", {})
    gpu = _gpu_name(mi)
    if header:
        lines.append(f"torch {mi.get('torch', '?')}, {_cpu_name(mi)}" + (f", {gpu}" if gpu else "")
                     + f", {data.get('datetime', '')}")
        lines.append("")
    lines.append("| group | impl | timing | median | GB/s | TFLOP/s | % copy | x ref | x peer | % gemm |")
    lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for g in sorted(groups, key=_group_key):
        rows = groups[g]

        def median(b):
            return b["stats"]["median"]

        def gbs(b):
            info = b.get("extra_info", {})
            if "bytes" in info:
                return info["bytes"] / median(b) / 1e9
            return info.get("GB/s")

        by_impl = {b.get("extra_info", {}).get("impl", b["name"]): b for b in rows}
        copy_gbs = gbs(by_impl["copy"]) if "copy" in by_impl else None
        gemm = by_impl.get("gemm")
        gemm_tflops = (gemm["extra_info"]["flops"] / median(gemm) / 1e12
                       if gemm is not None and "flops" in gemm.get("extra_info", {}) else None)
        # e2e groups compare against diffusers, sampling groups against the eager sampler
        ref = by_impl.get("reference", by_impl.get("diffusers", by_impl.get("eager")))
        ref_t = median(ref) if ref is not None else None
        peers = [median(b) for b in rows if b.get("extra_info", {}).get("peer")]
        peer_t = min(peers) if peers else None
        rows.sort(key=lambda b: (IMPL_ORDER.get(b.get("extra_info", {}).get("impl"), 9), b["name"]))
        for i, b in enumerate(rows):
            info = b.get("extra_info", {})
            impl = info.get("impl", b["name"])
            if info.get("backend") and info.get("device") and info["backend"] != info["device"]:
                # on CUDA a sign of a build without CUDA kernels; on CPU the dispatcher's measured choice
                impl += f" (ran {info['backend']}{'!' if info['device'] == 'cuda' else ''})"
            rate = gbs(b)
            pct = f"{100 * rate / copy_gbs:.0f}%" if (copy_gbs and rate is not None) else "-"
            xref = f"{ref_t / median(b):.2f}" if (ref_t and info.get("impl") not in ("copy", "gemm")) else "-"
            tflops = f"{info['flops'] / median(b) / 1e12:.3f}" if "flops" in info else "-"
            pct_gemm = (f"{100 * info['flops'] / median(b) / 1e12 / gemm_tflops:.0f}%"
                        if (gemm_tflops and "flops" in info) else "-")
            xpeer = (f"{peer_t / median(b):.2f}" if (peer_t and str(info.get("impl", "")).startswith("lumina"))
                     else "-")
            if info.get("gqa") == "expanded":
                impl += " (K/V expanded)"
            timing = info.get("timing", "")
            if timing.startswith("eager (graph capture failed"):
                timing = "eager*"
            lines.append(f"| {g if i == 0 else ''} | {impl} | {timing} | {_time(median(b))} | "
                         f"{'-' if rate is None else f'{rate:.1f}'} | {tflops} | {pct} | {xref} | {xpeer} | "
                         f"{pct_gemm} |")
    notes = sorted({f"{b['name']}: {b['extra_info']['timing']}" for r in groups.values() for b in r
                    if str(b.get("extra_info", {}).get("timing", "")).startswith("eager (graph capture failed")})
    if notes:
        lines.append("")
        lines.append("eager* = CUDA graph capture failed, timed eagerly:")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# result tables: benchmarks/results/<date>-<commit>-<device>-<name>.md (+ .json)
# ----------------------------------------------------------------------------------------------
def _cpu_name(mi: dict) -> str:
    cpu = mi.get("cpu") if isinstance(mi.get("cpu"), dict) else {}
    return cpu.get("brand_raw") or mi.get("processor") or mi.get("machine") or "?"


def _gpu_name(mi: dict) -> str | None:
    return mi.get("gpu", {}).get("name") if isinstance(mi.get("gpu"), dict) else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30,
                           cwd=pathlib.Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def run_commit(data: dict) -> tuple[str, bool]:
    """(short commit, dirty) of the run: the JSON's commit_info (pytest-benchmark records it), else this
    checkout's `git rev-parse --short HEAD` and `git status --porcelain`; ("unknown", False) without either."""
    ci = data.get("commit_info") or {}
    if ci.get("id"):
        return _git("rev-parse", "--short", ci["id"]) or ci["id"][:7], bool(ci.get("dirty"))
    head = _git("rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown", False
    return head, bool(_git("status", "--porcelain", "--untracked-files=no"))


def run_date(data: dict) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(data.get("datetime")))
    except ValueError:
        return dt.datetime.now(dt.timezone.utc)


def device_slug(data: dict, device: str | None = None) -> str:
    gpu = _gpu_name(data.get("machine_info", {}))
    return "cpu" if (device == "cpu" or not gpu) else _slug(gpu)


def results_header(data: dict, name: str, note: str | None = None) -> str:
    mi = data.get("machine_info", {})
    commit, dirty = run_commit(data)
    cpu = mi.get("cpu") if isinstance(mi.get("cpu"), dict) else {}
    gpu = mi.get("gpu") if isinstance(mi.get("gpu"), dict) else None
    machine = f"{_cpu_name(mi)} ({cpu.get('count', '?')} logical CPUs, torch threads {mi.get('cpu_threads', '?')})"
    if gpu:
        machine += (f"; GPU {gpu.get('name')} (compute capability {gpu.get('capability', '?')}, "
                    f"{gpu.get('sm_count', '?')} SMs, {gpu.get('memory_gib', '?')} GiB)")
    else:
        machine += "; no GPU"
    build = mi.get("lumina_build")
    lines = [f"# Benchmarks: {name}", "",
             f"- date: {run_date(data).strftime('%Y-%m-%d %H:%M %Z').strip()}",
             f"- commit: {commit}{'+dirty' if dirty else ''}"
             + (f" (branch {data['commit_info']['branch']})" if (data.get("commit_info") or {}).get("branch") else ""),
             f"- machine: {machine}",
             f"- torch {mi.get('torch', '?')}, CUDA {mi.get('torch_cuda') or 'none'}, Python "
             f"{mi.get('python', mi.get('python_version', '?'))}",
             ]
    if isinstance(build, dict):
        lines.append("- lumina_kernels build: " + ", ".join(f"{k} {v}" for k, v in build.items()))
    if mi.get("lumina_load_error"):
        lines.append(f"- lumina_kernels load error: {mi['lumina_load_error']}")
    if note:
        lines.append(f"- note: {note}")
    lines.append("")
    return "\n".join(lines) + "\n"


def write_results(data: dict, json_path: str, results_dir: str, name: str | None = None,
                  device: str | None = None, note: str | None = None) -> pathlib.Path:
    """Write <results_dir>/<date>-<commit>-<device>-<name>.md and copy the JSON beside it; returns the .md."""
    name = _slug(name or pathlib.Path(json_path).stem)
    commit, _ = run_commit(data)
    out_dir = pathlib.Path(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{run_date(data).strftime('%Y-%m-%d')}-{commit}-{device_slug(data, device)}-{name}"
    base, n = stem, 2
    while (out_dir / f"{stem}.md").exists() or (out_dir / f"{stem}.json").exists():  # never overwrite a result
        stem, n = f"{base}-{n}", n + 1
    md = out_dir / f"{stem}.md"
    md.write_text(results_header(data, name, note) + summarize(data, device, header=False))
    shutil.copyfile(json_path, out_dir / f"{stem}.json")
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    p.add_argument("--device", help="only groups on this device (cpu, cuda)")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--results", metavar="DIR",
                   help="write DIR/<date>-<commit>-<device>-<name>.md (header and table) and copy the JSON beside it")
    p.add_argument("--name", help="the <name> of the results file (default: the JSON file's stem)")
    p.add_argument("--note", help="a line for the results header (e.g. the machine was shared, timings noisy)")
    a = p.parse_args(argv)
    try:
        with open(a.json) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        print(f"summarize: cannot read {a.json}: {e}", file=sys.stderr)
        return 1
    table = summarize(data, a.device)
    sys.stdout.write(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)
    if a.results:
        try:
            md = write_results(data, a.json, a.results, a.name, a.device, a.note)
        except OSError as e:
            print(f"summarize: cannot write the results into {a.results}: {e}", file=sys.stderr)
            return 1
        print(f"summarize: wrote {md} and {md.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
