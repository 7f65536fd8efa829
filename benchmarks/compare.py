"""Compare two pytest-benchmark JSONs of the benchmark suite and flag regressions of lumina's own kernels.

    python benchmarks/compare.py OLD.json NEW.json [--threshold-iqr 1.0] [--min-ratio 1.05] [--out cmp.md]

Benchmarks are matched by group and implementation (extra_info["impl"], else the benchmark's name),
e.g. "rms_norm fwd cuda bf16 2x4096x2304 [lumina]". For every pair, with k = --threshold-iqr, the
spread = max(old IQR, new IQR) (pytest-benchmark's interquartile range of each run's rounds) and
ratio = new median / old median:

    REGRESSION  new - old > k * spread and ratio > --min-ratio, for lumina's own implementations
                (impl "lumina", "lumina-eager", "lumina-kernel", ...: every impl starting with "lumina")
    slower      the same for any other implementation (reference, compiled, peers, copy, gemm: the
                machine or a library changed, not lumina; reported, never failing)
    faster      old - new > k * spread and old / new > --min-ratio
    same        otherwise: the difference is within the run-to-run spread (or under the ratio)

A markdown table of every compared row (old and new median, ratio, spread, verdict) goes to stdout, then
the benchmarks present in only one of the files. A note says so when the two runs come from different
machines (CPU or GPU name), where a verdict says little. Exit status: 1 if any REGRESSION, 2 if a file
cannot be read or is not a pytest-benchmark JSON, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from summarize import _time  # compare.py runs as a script from benchmarks/, as summarize.py does


class CompareError(Exception):
    """A file that cannot be compared (unreadable, not JSON, not a pytest-benchmark JSON)."""


def load(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise CompareError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise CompareError(f"{path} is not JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise CompareError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' list); "
                           "write one with pytest --benchmark-json=PATH")
    for b in data["benchmarks"]:
        stats = b.get("stats") if isinstance(b, dict) else None
        if not isinstance(stats, dict) or "median" not in stats:
            raise CompareError(f"{path}: benchmark {b.get('name', '?') if isinstance(b, dict) else b!r} has no "
                               "stats.median")
    return data


def key(b: dict) -> str:
    """"group [impl]": the benchmark's identity across runs."""
    impl = (b.get("extra_info") or {}).get("impl") or b.get("name", "?")
    group = b.get("group") or b.get("name", "?")
    return f"{group} [{impl}]"


def is_lumina(b: dict) -> bool:
    return str((b.get("extra_info") or {}).get("impl", "")).startswith("lumina")


@dataclass
class Row:
    key: str
    old: float
    new: float
    spread: float
    lumina: bool
    verdict: str

    @property
    def ratio(self) -> float:
        return self.new / self.old if self.old > 0 else float("inf")


def verdict(old: dict, new: dict, threshold_iqr: float, min_ratio: float) -> Row:
    om, nm = old["stats"]["median"], new["stats"]["median"]
    spread = max(float(old["stats"].get("iqr") or 0.0), float(new["stats"].get("iqr") or 0.0))
    lumina = is_lumina(new)
    if nm - om > threshold_iqr * spread and nm > min_ratio * om:
        v = "REGRESSION" if lumina else "slower"
    elif om - nm > threshold_iqr * spread and om > min_ratio * nm:
        v = "faster"
    else:
        v = "same"
    return Row(key(new), om, nm, spread, lumina, v)


def _machine(data: dict) -> str:
    mi = data.get("machine_info") or {}
    cpu = (mi.get("cpu") or {}).get("brand_raw") if isinstance(mi.get("cpu"), dict) else None
    gpu = (mi.get("gpu") or {}).get("name") if isinstance(mi.get("gpu"), dict) else None
    return " / ".join(x for x in (cpu or mi.get("processor") or mi.get("machine"), gpu) if x) or "?"


def compare(old: dict, new: dict, threshold_iqr: float = 1.0, min_ratio: float = 1.05) -> tuple[list[Row], list[str],
                                                                                                 list[str]]:
    """(compared rows in the new file's order, keys only in old, keys only in new)."""
    olds = {key(b): b for b in old["benchmarks"]}
    news = {key(b): b for b in new["benchmarks"]}
    rows = [verdict(olds[k], b, threshold_iqr, min_ratio) for k, b in news.items() if k in olds]
    return rows, [k for k in olds if k not in news], [k for k in news if k not in olds]


def report(rows: list[Row], only_old: list[str], only_new: list[str], old: dict, new: dict,
           threshold_iqr: float, min_ratio: float) -> str:
    regressions = [r for r in rows if r.verdict == "REGRESSION"]
    lines = [f"old: {old.get('datetime', '?')} {(old.get('commit_info') or {}).get('id', '?')[:9]} on {_machine(old)}",
             f"new: {new.get('datetime', '?')} {(new.get('commit_info') or {}).get('id', '?')[:9]} on {_machine(new)}",
             f"threshold: new - old > {threshold_iqr:g} x max(IQR old, IQR new) and new / old > {min_ratio:g}"]
    if _machine(old) != _machine(new):
        lines.append("note: the two runs come from different machines; the verdicts compare machines, not code")
    lines += ["", "| benchmark | old median | new median | new/old | spread (IQR) | verdict |",
              "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        name = r.key + ("" if r.lumina else " (not lumina)" if r.verdict == "slower" else "")
        lines.append(f"| {name} | {_time(r.old)} | {_time(r.new)} | {r.ratio:.3f} | {_time(r.spread)} | "
                     f"{'**REGRESSION**' if r.verdict == 'REGRESSION' else r.verdict} |")
    if only_old or only_new:
        lines.append("")
        lines += [f"- only in old (not run in new): {k}" for k in only_old]
        lines += [f"- only in new (no old result): {k}" for k in only_new]
    counts = {v: sum(r.verdict == v for r in rows) for v in ("REGRESSION", "slower", "faster", "same")}
    lines += ["", f"{len(rows)} compared: {counts['REGRESSION']} regression(s) of lumina, {counts['slower']} slower "
                  f"(not lumina), {counts['faster']} faster, {counts['same']} same; {len(only_old)} only in old, "
                  f"{len(only_new)} only in new"]
    if regressions:
        lines.append("REGRESSIONS: " + "; ".join(f"{r.key} ({r.ratio:.2f}x)" for r in regressions))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", help="the baseline pytest-benchmark JSON")
    p.add_argument("new", help="the pytest-benchmark JSON to check")
    p.add_argument("--threshold-iqr", type=float, default=1.0,
                   help="k: a change must exceed k x the larger IQR of the two runs (default 1.0)")
    p.add_argument("--min-ratio", type=float, default=1.05,
                   help="and the ratio of the medians must exceed this (default 1.05)")
    p.add_argument("--out", help="also write the report to this file")
    a = p.parse_args(argv)
    try:
        old, new = load(a.old), load(a.new)
    except CompareError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    rows, only_old, only_new = compare(old, new, a.threshold_iqr, a.min_ratio)
    text = report(rows, only_old, only_new, old, new, a.threshold_iqr, a.min_ratio)
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 1 if any(r.verdict == "REGRESSION" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
