"""benchmarks/e2e.py (python -m benchmarks.e2e): a small end-to-end run against diffusers writes its table."""
import json

import pytest

pytest.importorskip("diffusers")
from benchmarks import e2e  # noqa: E402

pytestmark = pytest.mark.slow  # a whole benchmark script run: CI's first stage


def test_tiny_run_writes_table_and_json(tmp_path):
    out = tmp_path / "e2e.md"
    rc = e2e.main(["--configs", "tiny", "--runs", "1", "--out", str(out), "--results", str(tmp_path / "res")])
    assert rc == 0
    text = out.read_text()
    assert "dense matmul rate" in text and "commit " in text
    rows = [r for r in text.splitlines() if r.startswith("| tiny")]
    assert [r.split("|")[2].strip() + " " + r.split("|")[3].strip() for r in rows] == [
        "lumina eager", "lumina drop", "diffusers -"]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert cells[3].endswith(" s") and float(cells[3][:-2]) > 0  # generate time
        assert cells[7].endswith(" ms") and float(cells[7][:-3]) > 0  # step time
        assert cells[8].endswith(" GiB") and float(cells[8][:-4]) > 0.1  # peak memory
    data = json.loads(next((tmp_path / "res").glob("*-cpu-e2e.json")).read_text())
    lumina = [r for r in data["results"] if r["impl"] == "lumina"]
    assert all(r["nfe"] == 30 for r in lumina) and lumina[0]["step_flops"] > 0


def test_case_filters():
    cases = e2e._cases("cuda", ["2B"], 2)
    assert {(c.size, c.mode) for c in cases if c.impl == "lumina"} == {
        (s, m) for s in (1024, 2048) for m in e2e.CUDA_MODES}
    assert sum(c.impl == "diffusers" for c in cases) == 2
    with pytest.raises(SystemExit):
        e2e.main(["--configs", "huge"])


def test_repeated_options_list_each_case_once():
    """`--configs tiny,tiny` / `--modes eager,eager` run (and list in the table) each case once."""
    assert e2e._unique("tiny, tiny,mid,tiny") == ["tiny", "mid"]
    cases = e2e._cases("cpu", e2e._unique("tiny,tiny"), 1, e2e._unique("eager,eager"))
    assert [c.name for c in cases] == ["tiny 64px lumina eager", "tiny 64px diffusers"]
