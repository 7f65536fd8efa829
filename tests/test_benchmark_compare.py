"""benchmarks/compare.py: regressions of lumina's kernels beyond the run-to-run spread, and its exit codes."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import compare  # noqa: E402

GROUP = "rms_norm fwd cuda bf16 2x4096x2304"


def _bench(impl, median, iqr, group=GROUP):
    return {"name": f"test_kernel[{group.replace(' ', '-')}-{impl}]", "group": group,
            "stats": {"median": median, "iqr": iqr, "mean": median},
            "extra_info": {"impl": impl, "device": "cuda"}}


def _write(tmp_path, name, benchmarks, gpu="NVIDIA H200"):
    path = tmp_path / name
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "EPYC"}, "gpu": {"name": gpu}},
                                "commit_info": {"id": "0123456789abcdef"}, "datetime": "2026-12-01T00:00:00",
                                "benchmarks": benchmarks}))
    return str(path)


def _verdicts(text):
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith("|") and "---" not in line and "verdict" not in line]
    return {r[0]: r[5] for r in rows}


@pytest.fixture
def files(tmp_path):
    old = [_bench("lumina", 100e-6, 2e-6),             # regresses to 120 us: beyond 2 us of IQR and 5%
           _bench("lumina-eager", 100e-6, 10e-6),      # 108 us: more than 5% but within the 10 us IQR
           _bench("reference", 1e-3, 5e-6),            # 1.2 ms: slower, but not lumina's
           _bench("copy", 50e-6, 1e-6),                # 40 us: faster
           _bench("compiled", 80e-6, 1e-6),            # only in old
           _bench("lumina", 200e-6, 1e-6, group="apply_rope fwd cuda bf16 2x4096x32x72")]  # 203 us: within 5%
    new = [_bench("lumina", 120e-6, 3e-6), _bench("lumina-eager", 108e-6, 4e-6), _bench("reference", 1.2e-3, 5e-6),
           _bench("copy", 40e-6, 1e-6), _bench("liger", 90e-6, 1e-6),                    # only in new
           _bench("lumina", 203e-6, 1e-6, group="apply_rope fwd cuda bf16 2x4096x32x72")]
    return _write(tmp_path, "old.json", old), _write(tmp_path, "new.json", new)


def test_verdicts_and_exit_code_of_a_regression(files, capsys):
    assert compare.main(list(files)) == 1
    out = capsys.readouterr().out
    v = _verdicts(out)
    assert v[f"{GROUP} [lumina]"] == "**REGRESSION**"
    assert v[f"{GROUP} [lumina-eager]"] == "same"              # a slow-down within the spread
    assert v[f"{GROUP} [reference] (not lumina)"] == "slower"  # never a regression of lumina
    assert v[f"{GROUP} [copy]"] == "faster"
    assert v["apply_rope fwd cuda bf16 2x4096x32x72 [lumina]"] == "same"  # beyond the IQR, under --min-ratio
    assert f"only in old (not run in new): {GROUP} [compiled]" in out
    assert f"only in new (no old result): {GROUP} [liger]" in out
    assert "REGRESSIONS: " + f"{GROUP} [lumina] (1.20x)" in out
    assert "different machines" not in out


def test_thresholds_are_options(files, capsys):
    # k = 10: 20 us is within 10 x 3 us of spread; the copy speed-up (10 us) is within 10 us too
    assert compare.main([*files, "--threshold-iqr", "10"]) == 0
    v = _verdicts(capsys.readouterr().out)
    assert v[f"{GROUP} [lumina]"] == "same" and v[f"{GROUP} [copy]"] == "same"
    # a 1% ratio: the rope kernel's 3 us (> 1 us of IQR) now counts
    assert compare.main([*files, "--min-ratio", "1.01"]) == 1
    assert _verdicts(capsys.readouterr().out)["apply_rope fwd cuda bf16 2x4096x32x72 [lumina]"] == "**REGRESSION**"


def test_no_regression_exits_zero_and_a_speedup_within_noise_is_same(tmp_path, capsys):
    old = _write(tmp_path, "a.json", [_bench("lumina", 100e-6, 8e-6), _bench("lumina-kernel", 100e-6, 1e-6)])
    new = _write(tmp_path, "b.json", [_bench("lumina", 94e-6, 8e-6), _bench("lumina-kernel", 80e-6, 1e-6)],
                 gpu="NVIDIA H100")
    assert compare.main([old, new]) == 0
    out = capsys.readouterr().out
    v = _verdicts(out)
    assert v[f"{GROUP} [lumina]"] == "same"       # 6 us faster, within the 8 us IQR
    assert v[f"{GROUP} [lumina-kernel]"] == "faster"
    assert "different machines" in out


def test_unreadable_files_are_clear_errors(tmp_path, files, capsys):
    missing = str(tmp_path / "missing.json")
    assert compare.main([missing, files[1]]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert compare.main([files[0], str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"results": []}))
    assert compare.main([str(other), files[1]]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err
