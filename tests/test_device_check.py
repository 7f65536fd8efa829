"""The device check (benchmarks/device_check.sh, benchmarks/device_tests.py): a rehearsal of every plan on this
machine in dry-run mode with a fake GPU marker (step order, budgets adding up to the deadline, at most 8 output
files), the CUDA test runner's skip policy, crash detection and resume, and the architecture checks."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from benchmarks import device_tests as dt
from lumina_kernels import _ext

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [ROOT / "benchmarks" / "device_check.sh", ROOT / "benchmarks" / "fetch_wheels.sh"]
MAX_FILES = 8  # what the device tool brings back from $OUT
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")

PLANS = {  # plan -> (steps in order, deadline)
    "first": (["env", "wheels", "build", "info", "tests", "bench"], 420),
    "second": (["env", "build", "info", "sample"], 280),
    "e2e": (["env", "wheels", "build", "info", "e2e"], 280),
}


@needs_bash
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def _dry_run(tmp_path, plan, **env):
    out = tmp_path / "out"
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    (wheels / "fake-0.0-py3-none-any.whl").write_bytes(b"")  # the wheels step plans an install
    env = dict(os.environ, OUT=str(out), PLAN=plan, DRY_RUN="1", LUMINA_FAKE_GPU="1", PYTHON=sys.executable,
               LUMINA_WHEELS=str(wheels), **env)
    proc = subprocess.run(["bash", str(SCRIPTS[0])], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc, out


@needs_bash
@pytest.mark.parametrize("plan", sorted(PLANS))
def test_rehearsal_plans_steps_budget_and_files(tmp_path, plan):
    proc, out = _dry_run(tmp_path, plan)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    steps, deadline = PLANS[plan]
    planned = re.findall(r"^\[dry-run\] (\w+): budget (\d+) s", proc.stdout, re.M)
    assert [s for s, _ in planned] == steps, proc.stdout
    total = re.search(r"deadline (\d+) s; budgets: .* \(total (\d+) s\)", proc.stdout)
    assert total and int(total.group(1)) == int(total.group(2)) == deadline
    summary_budget = deadline - sum(int(b) for _, b in planned)
    assert 0 < summary_budget <= 15  # the steps and the final summary add up to the deadline
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) <= MAX_FILES and not any("/" in f for f in files), files
    expected = {"device_check.log", "logs.tar.gz", "summary.md"} | {
        "first": {"tests.json", "bench.json"}, "second": {"sample.json"}, "e2e": {"e2e.md"}}[plan]
    assert set(files) == expected
    summary = (out / "summary.md").read_text()
    for step in steps:
        assert f"| {step} | PLANNED |" in summary
    if plan == "first":  # every CUDA test family is planned, each in its own process
        with tarfile.open(out / "logs.tar.gz") as tar:
            plan_text = tar.extractfile("./tests.plan").read().decode()
        for group in dt.GROUPS:
            assert f"tests:{group.name}:" in plan_text
        assert "gpu=True" in plan_text


@needs_bash
def test_rehearsal_scales_budgets_to_a_shorter_deadline(tmp_path):
    proc, _ = _dry_run(tmp_path, "first", DEADLINE="210")
    assert proc.returncode == 0, proc.stdout[-2000:]
    budgets = dict(re.findall(r"^\[dry-run\] (\w+): budget (\d+) s", proc.stdout, re.M))
    assert int(budgets["build"]) == 75 and int(budgets["tests"]) == 67
    assert sum(map(int, budgets.values())) <= 210


@needs_bash
def test_unknown_plan_is_refused(tmp_path):
    proc, _ = _dry_run(tmp_path, "third")
    assert proc.returncode == 2 and "PLAN must be first, second or e2e" in proc.stdout


@needs_bash
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure without a GPU")
@pytest.mark.slow
def test_real_run_without_a_gpu_fails_loudly(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PLAN="second", SKIP_BUILD="1", PYTHON=sys.executable)
    env.pop("LUMINA_FAKE_GPU", None)
    proc = subprocess.run(["bash", str(SCRIPTS[0])], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| env | FAILED" in summary and "| info | FAILED" in summary
    assert "FAILED (no CUDA benchmark row in sample.json)" in summary  # skipped benchmarks are not a pass
    assert "torch sees no CUDA GPU" in (tmp_path / "out" / "device_check.log").read_text()


def test_info_require_cuda_names_what_is_missing():
    proc = subprocess.run([sys.executable, "-m", "lumina_kernels.info", "--require-cuda"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    from lumina_kernels import info

    problem = info.cuda_problem()
    assert (proc.returncode == 0) == (problem is None)
    if problem is not None:
        assert f"FAILED (--require-cuda): {problem}" in proc.stdout


# ---- the CUDA test runner ---------------------------------------------------------------------------------
def _events(*items):
    return [dict(zip(("event", "test", "outcome", "reason"), it)) for it in items]


def test_skips_on_a_gpu_machine_fail_unless_allowed():
    events = [{"event": "collected", "n": 4}] + _events(
        ("start", "a"), ("result", "a", "passed"),
        ("start", "b"), ("result", "b", "skipped", "no CUDA GPU"),
        ("start", "c"), ("result", "c", "skipped", "liger-kernel (the optional benchmark peer) not installed"),
        ("start", "d"), ("result", "d", "failed", "AssertionError: x"))
    for e in events:
        e.setdefault("when", "call")
    on_gpu, on_cpu = dt.GroupResult("g"), dt.GroupResult("g")
    assert dt.tally(on_gpu, events, gpu=True) == ({"a", "b", "c", "d"}, None)
    assert (on_gpu.passed, on_gpu.failed, on_gpu.skipped_ok, on_gpu.skipped_bad) == (1, 1, 1, 1)
    assert on_gpu.bad_skips == [("b", "no CUDA GPU")] and on_gpu.status() == "FAILED"
    dt.tally(on_cpu, events, gpu=False)
    assert (on_cpu.skipped_ok, on_cpu.skipped_bad) == (2, 0)


def test_a_process_that_dies_mid_test_is_reported_and_the_rest_of_its_group_runs(tmp_path):
    test_file = tmp_path / "test_fake_cuda.py"
    test_file.write_text(
        "import os, pytest\n"
        "pytestmark = pytest.mark.cuda\n"
        "def test_a(): pass\n"
        "def test_b(): os.abort()  # an illegal memory access kills the process like this\n"
        "def test_c(): pass\n"
        "def test_d(): assert 1 == 2\n")
    args = type("Args", (), dict(deadline=120, group_timeout=60, test_timeout=30, python=sys.executable, gpu=True,
                                 log=str(tmp_path / "log.txt"), out=tmp_path, jobs=1))()
    runner = dt.Runner(args)
    result = runner.run_group(dt.Group("fake", (str(test_file),)))
    assert len(result.crashed) == 1 and result.crashed[0].endswith("test_fake_cuda.py::test_b")
    assert (result.passed, result.failed, result.not_run, result.processes) == (2, 1, 0, 2)
    assert result.status() == "CRASHED"
    assert "test_d" in result.failures[0][0]


def test_runner_writes_json_and_table(tmp_path):
    args = type("Args", (), dict(out=tmp_path, gpu=True))()
    runner = dt.Runner.__new__(dt.Runner)
    runner.args, runner.lock, runner.results = args, __import__("threading").Lock(), {}
    runner.results["norm"] = dt.GroupResult("norm", collected=3, passed=3)
    data = runner.write_json([dt.GROUPS[0], dt.GROUPS[1]])
    assert json.loads((tmp_path / "tests.json").read_text()) == data
    assert [g["status"] for g in data["groups"]] == ["OK", "NOT STARTED"] and data["ok"] is False
    assert "| norm | OK | 3 | 0 | 0 | 0 | 0 | 0 |" in dt.table(data)
    assert dt.GroupResult("g", collected=2, skipped_ok=2).status() == "ALL SKIPPED"
    assert dt.GroupResult("g", collected=3, passed=1, not_run=2).status() == "INCOMPLETE"


def test_groups_cover_every_cuda_test_family_once():
    files = {g.args[0] for g in dt.GROUPS}
    assert files == {"tests/test_norm.py", "tests/test_rope.py", "tests/test_merge.py", "tests/test_solver_ops.py",
                     "tests/test_attention.py"}
    attn = [g.name for g in dt.GROUPS if g.args[0].endswith("test_attention.py")]
    assert max(i for i, n in enumerate(attn) if "fwd" in n) < min(i for i, n in enumerate(attn) if "bwd" in n)


# ---- CUDA architectures -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,cap,runs", [
    ("8.0;9.0+PTX", (8, 0), True), ("8.0;9.0+PTX", (8, 6), True), ("8.0;9.0+PTX", (8, 9), True),
    ("8.0;9.0+PTX", (9, 0), True), ("8.0;9.0+PTX", (10, 0), True), ("8.0;9.0+PTX", (7, 5), False),
    ("9.0+PTX", (8, 6), False), ("9.0", (9, 0), True), ("9.0", (12, 0), False), ("9.0a", (9, 0), True),
    ("8.6", (8, 0), False), ("8.0 8.6", (8, 9), True), ("", (9, 0), False),
])
def test_which_builds_run_on_which_gpus(spec, cap, runs):
    assert _ext.arch_runs_on(spec, *cap) is runs


def test_a_gpu_without_compiled_code_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setattr(_ext, "BUILD_INFO", dict(_ext.BUILD_INFO, cuda_archs="9.0+PTX"))
    monkeypatch.setattr(_ext, "_ARCH_REFUSALS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA GeForce RTX 3090")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    reason = _ext.arch_refusal(0)
    assert "RTX 3090 (8.6)" in reason and "LUMINA_CUDA_ARCHS=8.6" in reason
    # the dispatcher passes a tensor's device: an index, or none (the current device)
    for device in (torch.device("cuda", 0), torch.device("cuda"), "cuda:0", None):
        assert _ext.arch_refusal(device) == reason
    monkeypatch.setattr(_ext, "_ARCH_REFUSALS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: (9, 0))
    assert _ext.arch_refusal(0) is None
