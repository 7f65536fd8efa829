"""benchmarks/fidelity.py: its metrics and a small end-to-end run on the bundled model."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # a whole benchmark script run: CI's first stage

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "fidelity.py"
_spec = importlib.util.spec_from_file_location("lumina_fidelity", _PATH)
fidelity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fidelity)


def test_psnr_and_ssim():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 24, generator=g)
    assert fidelity.psnr(a, a) == math.inf
    assert fidelity.psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-6)  # MSE 0.01
    assert fidelity.ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    s = fidelity.ssim(a, noisy)
    assert 0.0 < s < 0.9
    assert fidelity.ssim(a, (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)) > s  # less noise, closer


def test_small_run_writes_a_table(tmp_path):
    out = tmp_path / "fid.md"
    rc = fidelity.main(["--size", "32", "--images", "2", "--ref-steps", "12", "--only", "midpoint 10",
                        "--only", "k4", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "config" not in line and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["midpoint 10", "drop pool k4"]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert 10.0 < float(cells[4]) < 100.0  # pixel PSNR against the 12-step reference: close, not equal
        assert 0.0 < float(cells[5]) <= 1.0
