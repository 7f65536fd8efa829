"""Turn a pytest-benchmark JSON of benchmarks/bench_kernels.py into a markdown table.

    python benchmarks/summarize.py bench.json [--device cuda] [--out summary.md]

One row per benchmark, grouped by (op, pass, device, dtype, shape): implementation, timing mode,
median time, GB/s (bytes of the op's byte model over the median), TFLOP/s (useful FLOPs over the
median, where the benchmark counts them), % of the GB/s of the `copy` benchmark in the same group (a
device-to-device copy of the same bytes, measured in the same run; "-" where the group has none,
e.g. on CPU), speed-up over the reference (x ref) and, for lumina's rows, over the fastest peer of the
group (x peer: benchmarks with extra_info["peer"], e.g. each torch SDPA backend).
"""
from __future__ import annotations

import argparse
import json
import sys

IMPL_ORDER = {"copy": 0, "lumina": 1, "lumina-eager": 2, "compiled": 3, "reference": 4,
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


def summarize(data: dict, device: str | None = None) -> str:
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
    gpu = mi.get("gpu", {}).get("name") if isinstance(mi.get("gpu"), dict) else None
    lines.append(f"torch {mi.get('torch', '?')}, {mi.get('cpu', {}).get('brand_raw', mi.get('processor', '?'))}"
                 + (f", {gpu}" if gpu else "") + f", {data.get('datetime', '')}")
    lines.append("")
    lines.append("| group | impl | timing | median | GB/s | TFLOP/s | % copy | x ref | x peer |")
    lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
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
            xpeer = (f"{peer_t / median(b):.2f}" if (peer_t and str(info.get("impl", "")).startswith("lumina"))
                     else "-")
            if info.get("gqa") == "expanded":
                impl += " (K/V expanded)"
            timing = info.get("timing", "")
            if timing.startswith("eager (graph capture failed"):
                timing = "eager*"
            lines.append(f"| {g if i == 0 else ''} | {impl} | {timing} | {_time(median(b))} | "
                         f"{'-' if rate is None else f'{rate:.1f}'} | {tflops} | {pct} | {xref} | {xpeer} |")
    notes = sorted({f"{b['name']}: {b['extra_info']['timing']}" for r in groups.values() for b in r
                    if str(b.get("extra_info", {}).get("timing", "")).startswith("eager (graph capture failed")})
    if notes:
        lines.append("")
        lines.append("eager* = CUDA graph capture failed, timed eagerly:")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    p.add_argument("--device", help="only groups on this device (cpu, cuda)")
    p.add_argument("--out", help="also write the table to this file")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
