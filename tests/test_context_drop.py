"""Context drop (merged keys/values in image self-attention), its schedule, CUDA-graph sampling (emulated on CPU) and
torch.compile compatibility of the model."""
import math

import numpy as np
import pytest
import torch

import lumina_kernels as lk
from lumina.cli import main as cli_main
from lumina.models.context_drop import ContextDropLayer, tome_merge
from lumina.models.nextdit import NextDiT, config_from_preset
from lumina.pipelines.tiny import randomize_weights
from lumina.sampling import ContextDrop, GraphedVelocity


# ----------------------------------------------------------------------------------------------
# the schedule
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,want", [
    (None, None), (0, None), ("off", None), ("1", None), (1, None),
    (2, ContextDrop(factor=2)), ("4", ContextDrop(factor=4)),
    ("factor=2,until=0.5,layers=1:-1,method=tome", ContextDrop(2, 0.0, 0.5, (1, -1), "tome")),
    ({"factor": 3, "start": 0.1, "layers": "2:"}, ContextDrop(3, 0.1, 0.6, (2, None))),
])
def test_parse(value, want):
    got = ContextDrop.parse(value)
    assert got == want
    if got is not None:
        assert ContextDrop.parse(got.spec()) == got  # the spec string round-trips


@pytest.mark.parametrize("value,match", [
    ("factor=0", "`factor` must be >= 1"), ("factor=x", "`factor` must be an integer"),
    ("until=1.5", "`until` must be a time in"), ("start=0.8,until=0.5", "`start` <= `until`"),
    ("method=nearest", "`method` must be one of"), ("layers=1:2:3", "`layers` must be a slice"),
    ({"size": 2}, "unknown keys"), ("factor", "`factor` must be an integer"), (2.5, "`context_drop` must be"),
    ("factor=2,until", "key=value"),
])
def test_parse_errors(value, match):
    with pytest.raises(ValueError, match=match):
        ContextDrop.parse(value)


def test_factors_over_time_and_layers():
    cd = ContextDrop(factor=2, start=0.1, until=0.6, layers=(1, -1))
    assert cd.factors(0.05, 5) is None  # before start
    assert cd.factors(0.1, 5) == (1, 2, 2, 2, 1)
    assert cd.factors(0.59, 5) == (1, 2, 2, 2, 1)
    assert cd.factors(0.6, 5) is None  # until is exclusive: the late steps run at full resolution
    assert ContextDrop(4).factors(0.0, 3) == (4, 4, 4)
    assert ContextDrop(2, layers=(5, None)).factors(0.0, 3) is None  # no layer in the slice


# ----------------------------------------------------------------------------------------------
# the attention of one layer
# ----------------------------------------------------------------------------------------------
def _rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Plain complex RoPE: pair i of each head rotated by freqs[..., i]; freqs (B, L, D/2)."""
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs.to(torch.complex128)[:, :, None]).reshape(x.shape)


def _oracle(q, k, v, freqs, mask, scale, grid, f):
    """float64 loops: RoPE on q and k, k and v averaged over f x f cells of the valid tokens, softmax attention."""
    B, L, H, D = q.shape
    KV = k.shape[2]
    qr, kr, vd = _rotate(q, freqs), _rotate(k, freqs), v.double()
    h, w = grid
    out = torch.zeros(B, L, H, D, dtype=torch.float64)
    for b in range(B):
        keys, vals = [], []
        for i0 in range(0, h, f):
            for j0 in range(0, w, f):
                idx = [i * w + j for i in range(i0, min(i0 + f, h)) for j in range(j0, min(j0 + f, w))
                       if mask is None or mask[b, i * w + j]]
                if idx:
                    keys.append(kr[b, idx].mean(0))
                    vals.append(vd[b, idx].mean(0))
        K, V = torch.stack(keys), torch.stack(vals)  # (N, KV, D)
        for hq in range(H):
            hk = hq // (H // KV)
            p = torch.softmax(qr[b, :, hq] @ K[:, hk].T * scale, dim=-1)  # (L, N)
            out[b, :, hq] = p @ V[:, hk]
    return out


@pytest.mark.parametrize("grid,f", [((13, 17), 2), ((13, 17), 4), ((8, 8), 2), ((5, 3), 4)])
@pytest.mark.parametrize("masked", [False, True])
def test_pool_layer_matches_oracle(grid, f, masked):
    torch.manual_seed(0)
    B, H, KV, D = 2, 4, 2, 16
    L = grid[0] * grid[1]
    q, k, v = (torch.randn(B, L, n, D) for n in (H, KV, KV))
    ang = torch.rand(B, L, D // 2) * 6.0
    freqs = torch.polar(torch.ones_like(ang), ang)
    mask = None
    if masked:
        mask = torch.rand(B, L) > 0.3
        mask[:, 0] = True
    layer = ContextDropLayer(f, grid, "pool")
    got = layer.attend(q, k, v, freqs, mask, 0.3)
    want = _oracle(q, k, v, freqs, mask, 0.3, grid, f)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


def test_rope_before_pooling_averages_the_logits():
    """The logit against a merged key is the mean of the logits against the cell's rotated keys."""
    torch.manual_seed(1)
    D, cell = 32, 4
    q, k = torch.randn(D, dtype=torch.float64), torch.randn(cell, D, dtype=torch.float64)
    ang = torch.rand(cell + 1, D // 2, dtype=torch.float64) * 20
    fr = torch.polar(torch.ones_like(ang), ang)
    rot = lambda x, f: torch.view_as_real(torch.view_as_complex(x.reshape(-1, D // 2, 2)) * f).reshape(-1, D)
    qr, kr = rot(q[None], fr[:1])[0], rot(k, fr[1:])
    assert torch.allclose(qr @ kr.mean(0), (kr @ qr).mean(), atol=1e-12)


def test_video_grid_pools_space_only():
    layer = ContextDropLayer(2, (3, 4, 6), "pool")
    assert layer.factors == (1, 2, 2)
    q = torch.randn(1, 72, 2, 8)
    k = v = torch.randn(1, 72, 2, 8)
    freqs = torch.polar(torch.ones(72, 4), torch.rand(72, 4))
    assert layer.attend(q, k, v, freqs, None, None).shape == (1, 72, 2, 8)


def test_tome_merge_sizes_and_identical_cells():
    torch.manual_seed(2)
    grid, f = (6, 6), 2
    # every 2x2 cell holds one distinct key repeated: similarity merging then equals pooling
    cells = torch.randn(1, 9, 2, 8)
    idx = torch.tensor([(i // 2) * 3 + (j // 2) for i in range(6) for j in range(6)])
    k = cells[:, idx]
    v = torch.randn(1, 36, 2, 8)
    km, vm, size = tome_merge(k, v, grid, (f, f))
    pooled_v, count = lk.merge_tokens(v, grid, f)
    torch.testing.assert_close(size, count)
    torch.testing.assert_close(km, cells)
    torch.testing.assert_close(vm, pooled_v, rtol=1e-5, atol=1e-6)
    mask = torch.rand(1, 36) > 0.4
    _, _, size = tome_merge(torch.randn(1, 36, 2, 8), v, grid, (f, f), mask)
    assert size.sum() == mask.sum()  # masked tokens count for nothing


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="`factor` must be an int >= 2"):
        ContextDropLayer(1, (4, 4))
    with pytest.raises(ValueError, match="`method`"):
        ContextDropLayer(2, (4, 4), "random")
    with pytest.raises(ValueError, match="grid"):
        ContextDropLayer(2, (16,))


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    m = NextDiT(config_from_preset("NextDiT_tiny")).eval()
    randomize_weights(m, std=0.2, generator=torch.Generator().manual_seed(3))
    return m


def _inputs(h=26, w=34, B=2):
    g = torch.Generator().manual_seed(4)
    return (torch.randn(B, 4, h, w, generator=g), torch.full((B,), 0.3), torch.randn(B, 5, 32, generator=g),
            torch.ones(B, 5, dtype=torch.bool))


@torch.inference_mode()
def test_model_off_is_bitwise_plain(model):
    x, t, cap, cm = _inputs()
    plain = model(x, t, cap, cm)
    assert torch.equal(plain, model(x, t, cap, cm, context_drop=None))
    assert torch.equal(plain, model(x, t, cap, cm, context_drop=[1, 1]))
    for method in ("pool", "tome"):
        merged = model(x, t, cap, cm, context_drop=[2, 1], context_drop_method=method)
        assert 0 < (merged - plain).abs().max() < 0.5 * plain.abs().max()


@torch.inference_mode()
def test_model_context_drop_errors(model):
    x, t, cap, cm = _inputs()
    with pytest.raises(ValueError, match="one int factor >= 1 per layer"):
        model(x, t, cap, cm, context_drop=[2])
    with pytest.raises(ValueError, match="images of one size"):  # pooling merges any sizes (test_modalities)
        model([x[0], x[1, :, :20, :20]], t, cap, cm, context_drop=[2, 2], context_drop_method="tome")


@pytest.mark.slow
def test_model_compiles_without_graph_breaks(model):
    """Every op on the path has a fake kernel: the whole forward traces into one graph (aot_eager: fast on CPU)."""
    torch._dynamo.reset()
    x, t, cap, cm = _inputs(16, 16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.inference_mode():
        for cd in (None, [2, 2]):
            want = model(x, t, cap, cm, context_drop=cd, t_value=0.3)
            got = compiled(x, t, cap, cm, context_drop=cd, t_value=0.3)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# CUDA graphs (emulated)
# ----------------------------------------------------------------------------------------------
def test_graphed_velocity_bookkeeping():
    calls = []

    def fn(x, t, t_value):
        calls.append(t_value)
        return x * t[:, None] + (1.0 if t_value < 0.5 else 2.0)

    g = GraphedVelocity(fn, key_fn=lambda tv: tv < 0.5, emulate=True)
    x = torch.randn(2, 3)
    outs = [g(x, torch.full((2,), tv)) for tv in (0.1, 0.2, 0.7, 0.9)]
    for tv, o in zip((0.1, 0.2, 0.7, 0.9), outs):
        torch.testing.assert_close(o, x * tv + (1.0 if tv < 0.5 else 2.0))
    assert g.captures == 2 and g.replays == 4
    assert outs[0].data_ptr() != outs[1].data_ptr()  # outputs are copies, never the static buffer


def test_graphed_velocity_static_inputs():
    g = GraphedVelocity(lambda x, t, tv, c: x + c, key_fn=lambda tv: None, emulate=True)
    g.set_inputs(torch.ones(3))
    x = torch.zeros(3)
    assert torch.equal(g(x, torch.zeros(1)), torch.ones(3))
    g.set_inputs(torch.full((3,), 5.0))  # rebinding copies into the static buffer the graph reads
    assert torch.equal(g(x, torch.zeros(1)), torch.full((3,), 5.0)) and g.captures == 1
    with pytest.raises(ValueError, match="shapes, dtypes and devices of the first binding"):
        g.set_inputs(torch.ones(4))


def test_graphed_velocity_exposes_a_leaking_time_dependence():
    """A forward that reads t on the host beyond its key gives stale results on replay: the emulation shows it."""
    g = GraphedVelocity(lambda x, t, tv: x + tv, key_fn=lambda tv: None, emulate=True)
    x = torch.zeros(1)
    assert g(x, torch.tensor([0.1])).item() == pytest.approx(0.1)
    assert g(x, torch.tensor([0.2])).item() == pytest.approx(0.1)  # the capture-time value: why keys matter


def test_graphed_velocity_falls_back_when_capture_fails():
    g = GraphedVelocity(lambda x, t, tv: x + 1, key_fn=lambda tv: None)  # real CUDA capture on a CPU tensor
    with pytest.warns(RuntimeWarning, match="CUDA-graph capture failed"):
        out = g(torch.zeros(2), torch.zeros(2))
    assert torch.equal(out, torch.ones(2)) and g.disabled is not None
    assert torch.equal(g(torch.ones(2), torch.zeros(2)), torch.full((2,), 2.0))


# ----------------------------------------------------------------------------------------------
# the pipeline (the bundled trained model) and the CLI
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    import lumina

    return lumina.load_pipeline(device="cpu", cache=False)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@torch.inference_mode()
def test_pipeline_context_drop_off_is_bitwise_and_on_is_bounded(pipe):
    from lumina.training.shapes import judge

    prompt = "a red circle on a blue background"
    kw = dict(steps=8, seed=11, output_type="pt", progress=False, height=32, width=32)  # its training size
    plain = pipe(prompt, **kw)
    assert pipe.last_run["context_drop"] is None and judge(plain[0], prompt)["correct"]
    for off in (0, "off", None):
        assert torch.equal(plain, pipe(prompt, context_drop=off, **kw))
    for cd in ("2", "factor=2,method=tome"):
        merged = pipe(prompt, context_drop=cd, **kw)
        assert pipe.last_run["context_drop"] == ContextDrop.parse(cd).spec()
        psnr = _psnr(plain, merged)
        # the bundled model of issue 17 at its training size (an 8x8 patch grid merged to 4x4 cells): merging moves
        # the circle (14.1 dB pool, 14.2 dB tome for this prompt and seed) but still draws a red circle on blue; an
        # image of other colours would be below 10 dB. At 64x64 this model draws almost no shape (see the README)
        assert judge(merged[0], prompt)["correct"], cd
        assert 12.0 < psnr < math.inf, (cd, psnr)


@torch.inference_mode()
@pytest.mark.parametrize("extra", [
    dict(),
    dict(context_drop="factor=2,until=0.5", cfg_truncation=0.6),
    dict(context_drop="factor=2,method=tome", rope_scaling="time_aware", solver="rk4"),
])
def test_emulated_graphs_reproduce_eager_sampling(pipe, extra):
    kw = dict(steps=5, seed=3, output_type="latent", progress=False, height=64, width=64, **extra)
    eager = pipe("a blue square", cuda_graphs=False, **kw)
    assert pipe.last_run["cuda_graphs"] == "off (cuda_graphs=False)"
    graphed = pipe("a blue square", cuda_graphs="emulate", **kw)
    run = pipe.last_run
    assert torch.equal(eager, graphed)
    assert isinstance(run["cuda_graphs"], dict) and run["cuda_graphs"]["replays"] == run["nfe"]
    assert 1 <= run["cuda_graphs"]["captures"] <= 4


@torch.inference_mode()
def test_graphs_persist_across_calls_with_new_captions(pipe):
    """A second call of the same signature replays the kept graphs (no capture) with the new prompt's features."""
    pipe._graph_cache.clear()
    kw = dict(steps=3, seed=4, output_type="latent", progress=False, context_drop=2)
    first = pipe("a red circle", cuda_graphs="emulate", **kw)
    assert pipe.last_run["cuda_graphs"]["captures"] >= 1
    second = pipe("a blue square", cuda_graphs="emulate", **kw)
    run = pipe.last_run["cuda_graphs"]
    assert run["captures"] == 0 and run["replays"] == pipe.last_run["nfe"]
    assert torch.equal(second, pipe("a blue square", cuda_graphs=False, **kw))
    assert not torch.equal(first, second)
    assert len(pipe._graph_cache) == 1
    (signature,) = pipe._graph_cache
    assert signature[1][1] % pipe.CAPTION_BUCKET == 0  # captions padded (masked) to a bucket: lengths share graphs
    longer = pipe("a blue square next to a small red circle", cuda_graphs="emulate", **kw)
    assert pipe.last_run["cuda_graphs"]["captures"] == 0
    assert torch.equal(longer, pipe("a blue square next to a small red circle", cuda_graphs=False, **kw))


def test_graph_refusals(pipe):
    with pytest.raises(ValueError, match="CUDA graphs cannot be used: the device is cpu"):
        pipe("a", steps=1, cuda_graphs=True, progress=False)
    with pytest.raises(ValueError, match="`cuda_graphs` must be"):
        pipe("a", steps=1, cuda_graphs="yes", progress=False)
    pipe("a", steps=1, progress=False, output_type="latent")
    assert pipe.last_run["cuda_graphs"] == "the device is cpu, not cuda"


@pytest.mark.slow
def test_pipeline_compile_option(pipe):
    torch._dynamo.reset()
    kw = dict(steps=2, seed=5, output_type="latent", progress=False, context_drop=2)
    with torch.inference_mode():
        want = pipe("a green star", **kw)
        got = pipe("a green star", compile="aot_eager", **kw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="`compile`"):
        pipe("a", steps=1, compile=3, progress=False)


def test_cli_context_drop_flags(tmp_path, monkeypatch):
    seen = {}
    import lumina.pipelines as pipelines
    from lumina.pipelines import ImageResult

    class FakePipe:
        modality, result_type = "image", ImageResult

        def __call__(self, prompt, negative, **kw):
            seen.update(kw)
            from PIL import Image

            return ImageResult([Image.new("RGB", (8, 8))])

    monkeypatch.setattr(pipelines, "load_pipeline", lambda *a, **k: FakePipe())
    out = tmp_path / "x.png"
    assert cli_main(["generate", "a", "--context-drop", "factor=2,until=0.5", "--cuda-graphs", "off", "--compile",
                     "-o", str(out)]) == 0
    assert seen["context_drop"] == "factor=2,until=0.5" and seen["cuda_graphs"] is False
    assert seen["compile"] == "inductor" and out.is_file()
