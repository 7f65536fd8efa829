"""benchmarks/summarize.py: the table the device check commits (TFLOP/s, x ref, x peer)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import summarize  # noqa: E402


def _bench(impl, median, **info):
    return {"name": f"test_attention[{impl}]", "group": "attention fwd cuda bf16 B2 L4096 H32/8 D72",
            "stats": {"median": median},
            "extra_info": {"impl": impl, "device": "cuda", "flops": 1e12, **info}}


def test_summary_reports_tflops_and_speedup_over_the_fastest_peer():
    data = {"benchmarks": [_bench("lumina", 2.0, backend="cuda"), _bench("sdpa-flash", 3.0, peer=True),
                           _bench("sdpa-cudnn", 2.5, peer=True), _bench("sdpa-efficient", 4.0, peer=True, gqa="expanded"),
                           _bench("reference", 10.0)]}
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in summarize.summarize(data).splitlines() if line.startswith("|") and "---" not in line}
    assert rows["lumina"][5] == "0.500"                       # TFLOP/s = 1e12 flops / 2 s
    assert rows["lumina"][8] == "1.25"                        # over sdpa-cudnn, the fastest peer
    assert rows["lumina"][7] == "5.00"                        # over the reference
    assert rows["sdpa-flash"][8] == "-"                       # peers get no x peer of their own
    assert "sdpa-efficient (K/V expanded)" in rows


def test_summary_flags_a_cuda_benchmark_that_ran_elsewhere():
    data = {"benchmarks": [_bench("lumina", 2.0, backend="sdpa")]}
    assert "lumina (ran sdpa!)" in summarize.summarize(data)
