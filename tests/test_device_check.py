"""benchmarks/device_check.sh: valid bash, and a dry run on this machine walks every step and reports each."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [ROOT / "benchmarks" / "device_check.sh", ROOT / "benchmarks" / "fetch_wheels.sh"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_dry_run_reports_every_step(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), SKIP_BUILD="1", PARTS="none", PYTHON=sys.executable,
               LUMINA_WHEELS=str(tmp_path / "no-wheels"), DEADLINE="120")
    proc = subprocess.run(["bash", str(SCRIPTS[0])], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    out = proc.stdout
    for step in ("build: SKIPPED (SKIP_BUILD=1)", "tests: SKIPPED (not in PARTS)", "sample: SKIPPED (not in PARTS)",
                 "bench: SKIPPED (not in PARTS)"):
        assert step in out, out[-2000:]
    assert "info: OK" in out
    if not _has_gpu():
        assert proc.returncode != 0 and "env: FAILED" in out  # no CUDA GPU here: the env step says so and fails
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.log", "build.log", "env.log", "info.log", "sample.log",
                                                              "tests.log"]


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()
