"""q/k/v (and the context's k/v) in one GEMM, SwiGLU's w1/w3 in one GEMM (lumina/models/fused.py): the state dict
keeps the official names and shapes, the cached fused weight never goes stale, training gives the official
Parameters the same gradients, and peft-style wrapped layers fall back to the separate layers."""
import copy

import pytest
import torch
from torch import nn

from lumina.models import fused
from lumina.models.lora import merge_lora
from lumina.models.nextdit import NextDiT, config_from_preset
from lumina.pipelines.tiny import randomize_weights

FUSED_NAMES = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wk_y.weight",
               "attention.wv_y.weight", "feed_forward.w1.weight", "feed_forward.w3.weight")


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    m = NextDiT(config_from_preset("NextDiT_tiny"))
    randomize_weights(m, std=0.05)
    return m.to(dtype).eval()


def _inputs(m, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    cfg = m.config
    x = torch.randn(2, cfg.in_channels, 16, 16, generator=g, dtype=dtype)
    feats = torch.randn(2, 7, cfg.context_dim, generator=g, dtype=dtype)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    return x, torch.tensor([0.3, 0.7]), feats, mask


def _both(m, inputs):
    """(fused, unfused) outputs."""
    out = m(*inputs)
    fused.FUSED_GEMM = False
    try:
        ref = m(*inputs)
    finally:
        fused.FUSED_GEMM = True
    return out, ref


@pytest.fixture(autouse=True)
def _fused_on(monkeypatch):
    monkeypatch.setattr(fused, "FUSED_GEMM", True)


def _cached(m):
    return [k for mod in m.modules() for k in mod.__dict__.get(fused._CACHE_ATTR, {})]


def test_state_dict_is_the_official_one():
    m = _model()
    keys = list(m.state_dict())
    with torch.no_grad():
        m(*_inputs(m))
    assert _cached(m)  # the fused path ran
    assert list(m.state_dict()) == keys and list(dict(m.named_parameters())) == keys[: len(list(m.parameters()))]
    layer = {k.split(".", 2)[2] for k in keys if k.startswith("layers.0.")}
    assert set(FUSED_NAMES) <= layer
    assert not any("qkv" in k or "w13" in k or fused._CACHE_ATTR in k for k in keys)
    cfg = m.config
    sd = m.state_dict()
    assert sd["layers.0.attention.wk.weight"].shape == (cfg.kv_heads * cfg.head_dim, cfg.dim)
    assert sd["layers.0.feed_forward.w3.weight"].shape == (cfg.ffn_hidden, cfg.dim)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_fused_equals_unfused(mode):
    m = _model()
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        out, ref = _both(m, _inputs(m))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_cache_follows_every_change(tmp_path):
    m = _model()
    inputs = _inputs(m)
    with torch.no_grad():
        m(*inputs)
        a = m.layers[0].attention
        a.wk.weight.mul_(1.5)  # in place
        m.layers[1].feed_forward.w3.weight.copy_(torch.randn_like(m.layers[1].feed_forward.w3.weight))
        out, ref = _both(m, inputs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        # load_state_dict copies (version bump) and assigns (new storage)
        sd = {k: v * 1.01 for k, v in m.state_dict().items()}
        m.load_state_dict(sd)
        out, ref = _both(m, inputs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        sd = {k: v.clone() * 0.99 for k, v in m.state_dict().items()}
        m.load_state_dict(sd, assign=True)
        out, ref = _both(m, inputs)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        # a dtype change
        m = m.double()
        d_inputs = [t.double() if t.is_floating_point() else t for t in inputs]
        out, ref = _both(m, d_inputs)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_lora_merge_reaches_the_fused_weight(tmp_path):
    from safetensors.torch import save_file
    import json

    m = _model()
    inputs = _inputs(m)
    cfg = m.config
    r = 4
    g = torch.Generator().manual_seed(3)
    w = {}
    for name, out_f in (("layers.0.attention.wv", cfg.kv_heads * cfg.head_dim), ("layers.0.feed_forward.w1",
                                                                                   cfg.ffn_hidden)):
        w[f"{name}.lora_A.weight"] = torch.randn(r, cfg.dim, generator=g)
        w[f"{name}.lora_B.weight"] = torch.randn(out_f, r, generator=g)
    save_file(w, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": r}))
    with torch.no_grad():
        before = m(*inputs)
        merge_lora(m, tmp_path)
        out, ref = _both(m, inputs)
    assert not torch.allclose(out, before)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_training_gradients_and_optimizer_steps():
    m = _model().train()
    m2 = copy.deepcopy(m)
    inputs = _inputs(m)
    m(*inputs).square().mean().backward()
    fused.FUSED_GEMM = False
    m2(*inputs).square().mean().backward()
    fused.FUSED_GEMM = True
    n_fused = 0
    for (n, p), (n2, p2) in zip(m.named_parameters(), m2.named_parameters()):
        assert n == n2
        if p2.grad is None:
            assert p.grad is None, n
            continue
        n_fused += n.endswith(FUSED_NAMES)
        torch.testing.assert_close(p.grad, p2.grad, rtol=1e-4, atol=1e-7, msg=n)
    assert n_fused == len(m.layers) * len(FUSED_NAMES)
    # an optimizer step on the official Parameters, then inference sees it
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    with torch.no_grad():
        m.eval()(*inputs)  # builds the cache
    opt.step()
    with torch.no_grad():
        out, ref = _both(m, inputs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


class _Wrapped(nn.Module):
    """A peft-like replacement of a Linear: the base layer plus an extra term the fused path must not skip."""

    def __init__(self, base):
        super().__init__()
        self.base_layer = base
        self.weight = base.weight

    def forward(self, x):
        return self.base_layer(x) + 1.0


def test_wrapped_layers_fall_back():
    m = _model()
    inputs = _inputs(m)
    with torch.no_grad():
        before = m(*inputs)
        for blk in m.layers:
            blk.attention.wk = _Wrapped(blk.attention.wk)
            blk.feed_forward.w3 = _Wrapped(blk.feed_forward.w3)
        out, ref = _both(m, inputs)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert not torch.allclose(out, before)


def test_deepcopy_and_clear():
    m = _model()
    inputs = _inputs(m)
    with torch.no_grad():
        m(*inputs)
        c = copy.deepcopy(m)
        assert not _cached(c) or all(v is None for mod in c.modules()
                                     for v in mod.__dict__.get(fused._CACHE_ATTR, {}).values())
        torch.testing.assert_close(c(*inputs), m(*inputs), rtol=0, atol=0)
        fused.clear_fused_cache(m)
        assert not _cached(m)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (inf when equal)."""
    mse = (a.double() - b.double()).square().mean().item()
    return float("inf") if mse == 0 else 10 * __import__("math").log10(1.0 / mse)


def test_default_model_images_match_the_unfused_ones():
    """The bundled default model with `lumina generate`'s defaults: fused GEMMs reorder no image visibly
    (>= 50 dB against the separate layers, today's path) for a few prompts and seeds."""
    import lumina
    from lumina.pipelines import default_model_path

    pipe = lumina.load_pipeline(default_model_path(), device="cpu")
    prompts = ["a red circle on a blue background", "a green triangle on a white background",
               "a yellow square on a black background"]
    values = []
    for seed in (0, 1):
        out = pipe(prompts, seed=seed, output_type="pt", progress=False)
        fused.FUSED_GEMM = False
        try:
            ref = pipe(prompts, seed=seed, output_type="pt", progress=False)
        finally:
            fused.FUSED_GEMM = True
        assert ref.min() >= 0 and ref.max() <= 1
        values += [psnr(o, r) for o, r in zip(out, ref)]
    print(f"\nPSNR fused vs unfused, default model, {len(values)} images: min {min(values):.1f} dB, "
          f"all {[round(v, 1) for v in values]}")
    assert min(values) >= 50, values
