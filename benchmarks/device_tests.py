"""The CUDA tests of the device check, one process per test family, so one failure costs one family at most.

    python -m benchmarks.device_tests --out DIR [--log FILE] [--jobs 4] [--deadline 150] [--dry-run]

An illegal memory access poisons the CUDA context of its whole process, and a hung kernel stops it, so the
`-m cuda` tests run in separate pytest processes (GROUPS: norm, rope, merge, solver first, then attention one
head dim per process, forward before backward), several at a time, without `-x`, each test under a timeout
(pytest-timeout where installed) and each process under its group's timeout. The plugin
`benchmarks/device_report.py` records every outcome as it happens: when a process dies, the test it was running is
reported as crashed and the rest of its group runs again in a new process (at most RESUMES times).

On a GPU machine a skipped CUDA test is a failure unless its reason matches ALLOWED_SKIPS (an optional peer that
is not installed). The run fails when the extension did not load, has no CUDA kernels, or no test ran.
Writes DIR/tests.json (rewritten after every group, so a timeout still leaves what finished) and prints a table.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ATTN = "tests/test_attention.py"
FWD = "not gradient and not backward"
BWD = "gradient or backward"


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    args: tuple[str, ...]


# Order matters: the cheap, independent families first; attention per head dim, forward before backward.
GROUPS: tuple[Group, ...] = (
    Group("norm", ("tests/test_norm.py",)),
    Group("rope", ("tests/test_rope.py",)),
    Group("merge", ("tests/test_merge.py",)),
    Group("solver", ("tests/test_solver_ops.py",)),
    *(Group(f"attn-fwd-d{d}", (ATTN, "--head-dim", str(d), "-k", FWD)) for d in (64, 72, 96, 128)),
    Group("attn-fwd-other", (ATTN, "--head-dim", "none", "-k", FWD)),
    *(Group(f"attn-bwd-d{d}", (ATTN, "--head-dim", str(d), "-k", BWD)) for d in (64, 72, 96, 128)),
    Group("attn-bwd-other", (ATTN, "--head-dim", "none", "-k", BWD)),
)

# The only reasons a CUDA test may skip on a GPU machine: an optional peer that is not installed.
ALLOWED_SKIPS = (re.compile(r"\bnot installed\b"),)
RESUMES = 2


def allowed_skip(reason: str) -> bool:
    return any(p.search(reason) for p in ALLOWED_SKIPS)


@dataclasses.dataclass
class GroupResult:
    name: str
    collected: int = 0
    passed: int = 0
    failed: int = 0
    skipped_ok: int = 0
    skipped_bad: int = 0
    crashed: list = dataclasses.field(default_factory=list)  # tests running when their process died
    not_run: int = 0
    seconds: float = 0.0
    processes: int = 0
    returncodes: list = dataclasses.field(default_factory=list)
    failures: list = dataclasses.field(default_factory=list)  # (test, reason)
    bad_skips: list = dataclasses.field(default_factory=list)  # (test, reason)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.skipped_bad or self.crashed or self.not_run) and self.passed > 0

    def status(self) -> str:
        if self.ok:
            return "OK"
        if self.crashed:
            return "CRASHED"
        if self.failed or self.skipped_bad:
            return "FAILED"
        if self.not_run:
            return "INCOMPLETE"
        return "ALL SKIPPED" if self.skipped_ok else "NOT RUN"


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off by a kill
            pass
    return events


def tally(result: GroupResult, events: list[dict], gpu: bool) -> tuple[set[str], str | None]:
    """Adds one process's events to `result`; returns (tests that finished, the test it died in or None)."""
    finished: set[str] = set()
    last_started = None
    for e in events:
        kind = e.get("event")
        if kind == "collected":
            result.collected = max(result.collected, e["n"])
        elif kind == "start":
            last_started = e["test"]
        elif kind == "result":
            test, outcome = e["test"], e["outcome"]
            if test in finished:  # a failed teardown after its call: count the test once
                if outcome == "failed":
                    result.failed += 1
                    result.failures.append((test, e.get("reason", "")))
                continue
            finished.add(test)
            reason = e.get("reason", "")
            if outcome == "passed":
                result.passed += 1
            elif outcome == "skipped":
                if not gpu or allowed_skip(reason):
                    result.skipped_ok += 1
                else:
                    result.skipped_bad += 1
                    result.bad_skips.append((test, reason))
            else:
                result.failed += 1
                result.failures.append((test, reason))
    died_in = last_started if last_started is not None and last_started not in finished else None
    return finished, died_in


def pytest_command(group: Group, python: str, test_timeout: float, deselect: list[str]) -> list[str]:
    cmd = [python, "-m", "pytest", *group.args, "-m", "cuda", "-q", "-p", "no:cacheprovider",
           "-p", "benchmarks.device_report", "-o", "addopts=", "--benchmark-skip", "-rfEs"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", str(int(test_timeout)), "--timeout-method", "thread"]
    for test in deselect:
        cmd += ["--deselect", test]
    return cmd


class Runner:
    def __init__(self, args):
        self.args = args
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.log = open(args.log, "a", encoding="utf-8") if args.log else sys.stdout
        self.results: dict[str, GroupResult] = {}
        self.work = Path(tempfile.mkdtemp(prefix="lumina-device-tests-"))

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.t0)

    def emit(self, text: str) -> None:
        with self.lock:
            self.log.write(text if text.endswith("\n") else text + "\n")
            self.log.flush()

    def run_group(self, group: Group) -> GroupResult:
        result = GroupResult(group.name)
        done: set[str] = set()
        crashed: list[str] = []
        t0 = time.monotonic()
        for attempt in range(RESUMES + 1):
            limit = min(self.args.group_timeout, self.left())
            if limit < 10:
                break
            report = self.work / f"{group.name}.{attempt}.jsonl"
            cmd = pytest_command(group, self.args.python, self.args.test_timeout, sorted(done) + crashed)
            env = dict(os.environ, LUMINA_TEST_REPORT=str(report), PYTHONUNBUFFERED="1")
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGINT)  # pytest still prints its summary
                try:
                    out, _ = proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    out, _ = proc.communicate()
                out += f"\n[device_tests] {group.name}: killed after its {limit:.0f} s timeout\n"
            result.processes += 1
            result.returncodes.append(proc.returncode)
            finished, died_in = tally(result, read_events(report), self.args.gpu)
            done |= finished
            self.emit(f"=== [tests:{group.name}] attempt {attempt + 1}: rc {proc.returncode}\n" + out[-20000:])
            if died_in is not None:
                crashed.append(died_in)
                result.crashed.append(died_in)
            remaining = result.collected - len(done) - len(crashed)
            if died_in is None or remaining <= 0:
                break  # pytest finished (whatever its exit code), or nothing is left behind the test that died
        result.not_run = max(0, result.collected - len(done) - len(crashed))
        result.seconds = round(time.monotonic() - t0, 1)
        return result

    def run(self, groups: list[Group]) -> dict:
        with cf.ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            futures = {pool.submit(self.run_group, g): g for g in groups}
            for fut in cf.as_completed(futures):
                r = fut.result()
                with self.lock:
                    self.results[r.name] = r
                self.write_json(groups)
                self.emit(f"=== [tests:{r.name}] {r.status()}: {r.passed} passed, {r.failed} failed, "
                          f"{r.skipped_bad} bad skips, {len(r.crashed)} crashed, {r.not_run} not run ({r.seconds} s)")
        return self.write_json(groups)

    def write_json(self, groups: list[Group]) -> dict:
        with self.lock:
            data = {"gpu": self.args.gpu, "allowed_skips": [p.pattern for p in ALLOWED_SKIPS],
                    "groups": [dataclasses.asdict(self.results[g.name]) | {"status": self.results[g.name].status()}
                               if g.name in self.results else {"name": g.name, "status": "NOT STARTED"} for g in groups]}
            data["ok"] = all(g["status"] == "OK" for g in data["groups"])
            tmp = self.args.out / "tests.json.tmp"
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(self.args.out / "tests.json")
        return data


def table(data: dict) -> str:
    lines = ["| group | status | passed | failed | allowed skips | bad skips | crashed | not run | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in data["groups"]:
        lines.append(f"| {g['name']} | {g['status']} | {g.get('passed', 0)} | {g.get('failed', 0)} | "
                     f"{g.get('skipped_ok', 0)} | {g.get('skipped_bad', 0)} | {len(g.get('crashed', []))} | "
                     f"{g.get('not_run', 0)} | {g.get('seconds', 0)} |")
    for g in data["groups"]:
        for test, reason in g.get("failures", [])[:5] + g.get("bad_skips", [])[:5]:
            first = (reason or "").strip().splitlines()[-1:] or [""]
            lines.append(f"- {test}: {first[0][:200]}")
        for test in g.get("crashed", []):
            lines.append(f"- {test}: the process died here (illegal access, hang or timeout)")
    return "\n".join(lines)


def extension_problem(python: str, gpu: bool) -> str | None:
    """None when lumina_kernels._C loaded with CUDA kernels (that run on the visible GPU), else what is wrong.
    Asked in a child process: a broken extension must not take this runner down."""
    code = ("import sys; from lumina_kernels import info\n"
            "print(info.cuda_problem(require_gpu=sys.argv[1] == '1') or 'ok')")
    out = subprocess.run([python, "-c", code, "1" if gpu else "0"], cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    text = (out.stdout.strip().splitlines() or [""])[-1]
    return None if out.returncode == 0 and text == "ok" else (text or out.stderr[-500:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for tests.json")
    ap.add_argument("--log", help="append every process's output to this file (default: stdout)")
    ap.add_argument("--jobs", type=int, default=4, help="groups run at once (default 4)")
    ap.add_argument("--deadline", type=float, default=150, help="seconds for everything (default 150)")
    ap.add_argument("--group-timeout", type=float, default=120, help="seconds per process (default 120)")
    ap.add_argument("--test-timeout", type=float, default=60, help="seconds per test, with pytest-timeout (default 60)")
    ap.add_argument("--groups", help="comma-separated group names (default: all)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto",
                    help="is this a GPU machine (skips there are failures)? auto: LUMINA_FAKE_GPU=1 or torch sees one")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    ap.add_argument("--table", action="store_true", help="print the table of OUT/tests.json and exit")
    args = ap.parse_args(argv)
    if args.table:
        data = json.loads((args.out / "tests.json").read_text())
        print(table(data) if "groups" in data else f"no test ran: {data.get('error')}")
        return 0
    groups = list(GROUPS)
    if args.groups:
        names = args.groups.split(",")
        unknown = sorted(set(names) - {g.name for g in GROUPS})
        if unknown:
            ap.error(f"--groups: unknown {unknown}; known: {[g.name for g in GROUPS]}")
        groups = [g for g in GROUPS if g.name in names]
    if args.gpu == "auto":
        fake = os.environ.get("LUMINA_FAKE_GPU") == "1"
        args.gpu = fake or (not args.dry_run and _torch_sees_gpu())
    else:
        args.gpu = args.gpu == "yes"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        for g in groups:
            print(f"[dry-run] tests:{g.name}: {' '.join(pytest_command(g, 'python', args.test_timeout, []))} "
                  f"(timeout {args.group_timeout:.0f} s)")
        print(f"[dry-run] {len(groups)} groups, {args.jobs} at a time, deadline {args.deadline:.0f} s, gpu={args.gpu}")
        return 0
    problem = extension_problem(args.python, args.gpu and os.environ.get("LUMINA_FAKE_GPU") != "1")
    if problem is not None:
        print(f"device_tests: FAILED before any test: {problem}")
        (args.out / "tests.json").write_text(json.dumps({"ok": False, "error": problem}))
        return 1
    data = Runner(args).run(groups)
    print(table(data))
    ran = sum(g.get("passed", 0) + g.get("failed", 0) for g in data["groups"])
    if ran == 0:
        print("device_tests: FAILED: no CUDA test ran")
        return 1
    return 0 if data["ok"] else 1


def _torch_sees_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
