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


def test_summary_reports_the_fraction_of_the_groups_gemm_rate():
    data = {"benchmarks": [_bench("gemm", 1.0, flops=4e12), _bench("lumina", 2.0), _bench("sdpa-flash", 4.0, peer=True),
                           _bench("copy", 1.0, flops=None)]}
    data["benchmarks"][-1]["extra_info"].pop("flops")
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in summarize.summarize(data).splitlines() if line.startswith("|") and "---" not in line}
    assert rows["impl"][9] == "% gemm"
    assert rows["gemm"][5] == "4.000" and rows["gemm"][9] == "100%"
    assert rows["lumina"][9] == "12%"                          # 0.5 of 4 TFLOP/s
    assert rows["sdpa-flash"][9] == "6%"
    assert rows["copy"][9] == "-"                              # no FLOPs counted
    assert rows["gemm"][7] == "-" and rows["gemm"][8] == "-"   # a ceiling, not an implementation


def test_results_file_name_header_and_json_copy(tmp_path, monkeypatch):
    import json

    data = {"benchmarks": [_bench("lumina", 2.0), _bench("gemm", 1.0)],
            "datetime": "2026-12-01T10:41:45.781728+00:00",
            "commit_info": {"id": "0123456789abcdef0123", "dirty": True, "branch": "main"},
            "machine_info": {"cpu": {"brand_raw": "AMD EPYC", "count": 16}, "cpu_threads": 16,
                             "gpu": {"name": "NVIDIA H200", "capability": "9.0", "sm_count": 132, "memory_gib": 139.8},
                             "torch": "2.11.0", "torch_cuda": "13.0", "python": "3.11.7"}}
    src = tmp_path / "cuda_kernels.json"
    src.write_text(json.dumps(data))
    monkeypatch.setattr(summarize, "_git", lambda *a: None)  # the JSON's commit_info, not this checkout's
    out = tmp_path / "results"
    assert summarize.main([str(src), "--results", str(out), "--note", "shared machine"]) == 0
    md = out / "2026-12-01-0123456-nvidia-h200-cuda-kernels.md"
    assert md.exists() and json.loads(md.with_suffix(".json").read_text()) == data
    text = md.read_text()
    assert "- commit: 0123456+dirty (branch main)" in text
    assert "NVIDIA H200" in text and "AMD EPYC" in text and "torch 2.11.0, CUDA 13.0" in text
    assert "- note: shared machine" in text and "| group | impl |" in text
    # a second run never overwrites the first; --name names the file
    assert summarize.main([str(src), "--results", str(out)]) == 0
    assert (out / "2026-12-01-0123456-nvidia-h200-cuda-kernels-2.md").exists()
    assert summarize.main([str(src), "--results", str(out), "--name", "H200 attention", "--device", "cpu"]) == 0
    assert (out / "2026-12-01-0123456-cpu-h200-attention.md").exists()
