"""Reliability at the edges, one class of input after another: training never loses what it had, nothing spins
forever, NaN and inf are never hidden, double backward is refused by name, and bad files and values get errors
that name them (the CLI in one line, in its own option names)."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import lumina_kernels as lk
from lumina.cli import main as cli_main
from lumina.pipelines import NonFiniteError
from lumina.pipelines.tiny import build_tiny_gemma, build_tiny_pipeline
from lumina.training import checkpointing as ckpt_io
from lumina.training import config as C
from lumina.training.trainer import Trainer, read_log
from lumina_kernels.testing import rope_table

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Path:
    return build_tiny_gemma(tmp_path_factory.mktemp("te") / "gemma")


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny")


def _cfg(out: Path, gemma: Path, **train) -> C.Config:
    return C.from_dict({
        "model": {"preset": "NextDiT_tiny", "overrides": {"dim": 32, "n_layers": 1, "n_heads": 2, "patch_size": 2,
                                                          "learn_sigma": False},
                  "text_encoder": str(gemma), "text_layer": -2, "max_length": 16, "codec": "pixel"},
        "data": {"shapes": 8, "resolution": 8, "buckets": "square"},
        "train": {"out_dir": str(out), "steps": 4, "batch_size": 2, "save_every": 1, "keep_last": 2,
                  "progress": False, **train},
    })


# ----------------------------------------------------------------------------------------------
# training never loses what it had
# ----------------------------------------------------------------------------------------------
def _run_to(out: Path, gemma: Path, steps: int) -> Trainer:
    tr = Trainer(_cfg(out, gemma, steps=steps))
    tr.train()
    return tr


@pytest.mark.parametrize("damage", ["dangling", "missing", "corrupt_state", "corrupt_weights", "garbage_pointer"])
def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path, gemma, damage):
    out = tmp_path / "run"
    _run_to(out, gemma, 4)  # keeps step 3 and 4
    root = out / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000003", "step_0000004"]
    if damage == "dangling":  # the newest checkpoint was deleted, `latest` still names it
        import shutil

        shutil.rmtree(root / "step_0000004")
    elif damage == "missing":
        (root / "latest").unlink()
    elif damage == "corrupt_state":
        (root / "step_0000004" / ckpt_io.STATE_FILE).write_bytes(b"not a torch file")
    elif damage == "corrupt_weights":
        w = root / "step_0000004" / "model.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    else:
        (root / "latest").write_text("../../etc")
    tr = Trainer(_cfg(out, gemma, steps=6))
    with pytest.warns(RuntimeWarning, match="resuming from") as rec:
        path = tr.resume()
    expected = "step_0000004" if damage in ("missing", "garbage_pointer") else "step_0000003"
    assert path.name == expected and tr.step == int(expected[5:])
    msg = str(rec[0].message)
    assert {"dangling": "does not exist", "missing": "is missing", "corrupt_state": "could not be read",
            "corrupt_weights": "could not be read", "garbage_pointer": "does not exist"}[damage] in msg


def test_a_resumed_run_deletes_and_truncates_nothing_earlier(tmp_path, gemma):
    out = tmp_path / "run"
    _run_to(out, gemma, 4)
    root = out / "checkpoints"
    (root / "latest").write_text("step_0000003")  # as if the run had died before step 4's pointer
    rows_before = (out / "loss.csv").read_text().splitlines()
    tr = Trainer(_cfg(out, gemma, steps=7))
    tr.train()
    names = sorted(p.name for p in root.glob("step_*"))
    # the earlier run's step 3 stays; its step 4 was moved aside (not deleted) when rewritten; this run keeps 2
    assert "step_0000003" in names and "step_0000006" in names and "step_0000007" in names
    assert any(n.startswith("step_0000004.replaced-") for n in names)
    text = (out / "loss.csv").read_text().splitlines()
    assert text[:len(rows_before)] == rows_before  # appended, never truncated
    assert [r["step"] for r in read_log(out / "loss.csv")] == list(range(1, 8))


def test_every_checkpoint_unreadable_is_an_error_not_a_restart(tmp_path, gemma):
    out = tmp_path / "run"
    _run_to(out, gemma, 2)
    for p in (out / "checkpoints").glob("step_*"):
        (p / ckpt_io.STATE_FILE).write_bytes(b"x")
    tr = Trainer(_cfg(out, gemma, steps=3))
    with pytest.raises(C.ConfigError, match="no checkpoint .* could be read.*train.resume=null"):
        tr.resume()


# ----------------------------------------------------------------------------------------------
# no hangs
# ----------------------------------------------------------------------------------------------
def test_a_dataset_of_unreadable_images_stops_with_a_count(tmp_path, gemma):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(b"not a png")
        (src / f"{i}.txt").write_text("a caption")
    cfg = _cfg(tmp_path / "run", gemma, steps=2)
    cfg = C.from_dict({**cfg.to_dict(), "data": {"source": str(src), "resolution": 8, "buckets": "square"}})
    tr = Trainer(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(C.ConfigError, match=r"none of the 3 items could be read.*0\.png"):
            tr.train()


def test_an_empty_loader_raises_instead_of_spinning():
    from lumina.training.data import epochs, make_loader

    class Empty(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 2, 2), "caption": "", "key": "k", "index": i}

    loader = make_loader(Empty(), 1, rank=1, world_size=4, drop_last=True)  # this rank's shard is empty
    with pytest.raises(ValueError, match="yields no batch"):
        next(epochs(loader))


# ----------------------------------------------------------------------------------------------
# NaN and inf are never hidden
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_propagates_non_finite_inputs_as_the_reference(where, bad, dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 70, 4, 16, generator=g).to(dtype) for _ in range(3))
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[1, 60:] = False
    {"q": q, "k": k, "v": v}[where][0, 5, 1, 3] = bad
    f = rope_table(70, 16)
    with torch.no_grad():
        got = lk.attention(q, k, v, q_freqs=f, k_freqs=f, key_padding_mask=mask)
        ref = lk.reference.attention(q, k, v, f, f, mask)
    assert not bool(torch.isfinite(got[0]).all())  # never a plausible finite sample in its place
    if bad != bad or where != "k":  # NaN anywhere, inf in q / v: the same outputs as the reference are non-finite
        assert torch.equal(torch.isfinite(got), torch.isfinite(ref))  # (an inf key may legitimately weigh 0)
    assert bool(torch.isfinite(got[1]).all())  # the other sample is untouched


def test_masked_keys_holding_nan_contribute_nothing():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 40, 2, 16, generator=g) for _ in range(3))
    mask = torch.ones(1, 40, dtype=torch.bool)
    mask[0, 30:] = False
    k[0, 35], v[0, 36] = float("nan"), float("inf")
    with torch.no_grad():
        got = lk.attention(q, k, v, key_padding_mask=mask)
        ref = lk.reference.attention(q, k, v, None, None, mask)
    assert bool(torch.isfinite(got).all()) and bool(torch.isfinite(ref).all())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["rms_norm", "rope", "merge_tokens", "solver_update", "cfg_combine"])
def test_other_ops_propagate_nan(op):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 4, 8, generator=g)
    x[0, 3, 1, 2] = float("nan")
    if op == "rms_norm":
        out = lk.rms_norm(x, torch.ones(8))
        assert torch.isnan(out[0, 3, 1]).all() and bool(torch.isfinite(out[1]).all())
    elif op == "rope":
        out = lk.apply_rope(x, rope_table(16, 8))
        assert torch.isnan(out[0, 3, 1]).any() and bool(torch.isfinite(out[1]).all())
    elif op == "merge_tokens":
        out, _ = lk.merge_tokens(x[:, :, 1], (4, 4), 2)  # head 1 holds the NaN
        assert torch.isnan(out[0]).any() and bool(torch.isfinite(out[1]).all())
    elif op == "solver_update":
        out = lk.solver_update(torch.zeros_like(x), [x], [1.0], 0.5)
        assert torch.isnan(out[0, 3, 1, 2]) and int(torch.isnan(out).sum()) == 1
    else:
        out = lk.cfg_combine(x, torch.zeros_like(x), 4.0)
        assert torch.isnan(out[0, 3, 1, 2]) and int(torch.isnan(out).sum()) == 1


def test_pipeline_refuses_to_return_a_non_finite_image(pipe_dir):
    from lumina.pipelines import LuminaPipeline

    pipe = LuminaPipeline.from_pretrained(pipe_dir, device="cpu")
    with torch.no_grad():
        pipe.transformer.final_layer.linear.bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"first solver step.*weights hold NaN or inf.*final_layer"):
        pipe("a red circle", steps=2, seed=0, progress=False)


# ----------------------------------------------------------------------------------------------
# double backward: refused, not wrong
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["rms_norm", "attention", "merge_tokens"])
def test_double_backward_is_refused_by_name(op):
    x = torch.randn(2, 16, 4, 8, requires_grad=True)

    def f():
        if op == "rms_norm":
            return lk.rms_norm(x, torch.ones(8))
        if op == "attention":
            return lk.attention(x, x, x)
        return lk.merge_tokens(x[:, :, 0], (4, 4), 2)[0]

    (g,) = torch.autograd.grad((f() ** 2).sum(), x)  # a first derivative works
    assert bool(torch.isfinite(g).all())
    with pytest.raises(RuntimeError, match=f"{op}: double backward"):
        torch.autograd.grad((f() ** 2).sum(), x, create_graph=True)


def test_rope_double_backward_is_right():
    """RoPE's backward is RoPE itself (differentiable): the fp32 kernel's second derivative is the reference's."""
    f = rope_table(6, 8)
    x0 = torch.randn(1, 6, 2, 8)

    def second(x, fn):
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((fn(x) ** 3).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad((g ** 2).sum(), x)
        return gg

    got = second(x0, lambda t: lk.apply_rope(t, f))
    want = second(x0.double(), lambda t: lk.reference.apply_rope(t, f))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    assert got.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# every bad file and value named
# ----------------------------------------------------------------------------------------------
def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumina", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_cli_errors_are_one_line_in_its_own_names(pipe_dir, tmp_path):
    r = _cli(["generate", "a", "--model", str(pipe_dir), "--cfg", "-1", "--steps", "1", "-o", str(tmp_path / "a.png")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "`--cfg`" in lines[0] and "cfg_scale" not in lines[0]
    r = _cli(["generate", "a", "--model", str(pipe_dir), "--cfg", "-1", "--steps", "1", "--debug",
              "-o", str(tmp_path / "a.png")])
    assert r.returncode != 0 and "Traceback" in r.stderr  # --debug shows it


@pytest.mark.parametrize("args,match", [
    (["--device", "foo"], "`--device` must be cpu, cuda"),
    (["--compile", "no_such_backend"], "`--compile` must be a bool or a torch.compile backend"),
    (["--context-drop", "factor=2,factor=3"], "gives `factor` twice"),
    (["--context-drop", "factor=2,layers=5:9"], "outside the model's 2 layers"),
    (["--cfg-channels", "9"], "`--cfg-channels` = 9 exceeds the model's 4 latent channels"),
    (["--scale-watershed", "2"], "`--scale-watershed` must be a time in [0, 1]"),
    (["--lora-scale", "nan", "--lora", "."], "`--lora-scale` must be a finite number"),
    (["-o", "out.txt"], "must end in .png"),
])
def test_bad_generate_values_are_refused(pipe_dir, tmp_path, capsys, args, match):
    if "--lora" in args:
        args = [a if a != "." else str(tmp_path) for a in args]
    rc = cli_main(["generate", "a", "--model", str(pipe_dir), "--steps", "1", "--no-progress",
                   *(args if "-o" in args else [*args, "-o", str(tmp_path / "x.png")])])
    err = capsys.readouterr().err
    assert rc == 2 and match in err, err
    assert not (tmp_path / "x.png").exists()


def test_cuda_without_a_gpu_is_named(pipe_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cli_main(["generate", "a", "--model", str(pipe_dir), "--device", "cuda"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_bad_files_are_named(pipe_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pipe_dir, bad)
    (bad / "lumina_pipeline.json").write_text("{not json")
    assert cli_main(["generate", "a", "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "lumina_pipeline.json" in err and "JSON" in err
    (bad / "lumina_pipeline.json").write_text(json.dumps({"defaults": {"steps": "thirty"}}))
    assert cli_main(["generate", "a", "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "lumina_pipeline.json" in err and "defaults.steps" in err
    (bad / "lumina_pipeline.json").write_text("[1, 2]")
    assert cli_main(["generate", "a", "--model", str(bad)]) == 2
    assert "must be a JSON object" in capsys.readouterr().err
    (bad / "lumina_pipeline.json").unlink()
    w = bad / "transformer" / "model_ema.safetensors"  # the weights a pipeline samples with
    w.write_bytes(w.read_bytes()[:64])
    assert cli_main(["generate", "a", "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model_ema.safetensors" in err and "not a readable safetensors file" in err
    f = tmp_path / "afile"
    f.write_text("x")
    assert cli_main(["generate", "a", "--model", str(f)]) == 2
    assert "is a file; expected a pipeline directory" in capsys.readouterr().err


@pytest.mark.parametrize("patch,match", [
    ({"model": {"overrides": {"n_layers": -1}}}, "`n_layers`"),
    ({"model": {"overrides": {"n_layers": 1.5}}}, "`n_layers`"),
    ({"train": {"steps": [1]}}, r"`train\.steps` must be an integer"),
    ({"lora": {"rank": 0}}, r"`lora\.rank` must be >= 1"),
])
def test_bad_training_configs_are_named(tmp_path, gemma, patch, match):
    d = _cfg(tmp_path / "run", gemma).to_dict()
    for section, values in patch.items():
        if section == "model" and "overrides" in values:
            d["model"]["overrides"].update(values["overrides"])
        else:
            d[section] = {**(d.get(section) or {}), **values}
    with pytest.raises(C.ConfigError, match=match):
        Trainer(C.from_dict(d))


# ----------------------------------------------------------------------------------------------
# sizes checked against memory before allocating
# ----------------------------------------------------------------------------------------------
def test_a_generation_beyond_memory_is_refused_before_allocating(pipe_dir):
    from lumina.memory import MemoryEstimateError
    from lumina.pipelines import LuminaPipeline

    pipe = LuminaPipeline.from_pretrained(pipe_dir, device="cpu")
    with pytest.raises(MemoryEstimateError, match=r"generating 1 sample\(s\) of size 65536x65536 needs about .* free"):
        pipe("a", height=65536, width=65536, steps=1, progress=False)
    pipe("a", height=32, width=32, steps=1, progress=False)  # a normal size passes the check


def test_a_training_resolution_beyond_memory_is_refused(tmp_path, gemma):
    d = _cfg(tmp_path / "run", gemma).to_dict()
    d["data"]["resolution"] = 100000
    with pytest.raises(C.ConfigError, match=r"data\.resolution=100000 needs about .* free"):
        Trainer(C.from_dict(d))
    assert not (tmp_path / "run" / "data").exists() or not any((tmp_path / "run" / "data").iterdir())


def test_the_output_path_is_checked_before_any_work(pipe_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = cli_main(["generate", "a", "--model", str(pipe_dir), "-o", str(blocker / "out.png")])
    assert rc == 2 and "`--output`" in capsys.readouterr().err
