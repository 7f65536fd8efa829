"""One Next-DiT core for every modality: the adapter registry, tiny random image / sequence / volume models (forward,
backward, padding, native checkpoints), per-token conditioning, the token backbone on its own, RoPE from N-D
positions, and clear errors."""
import json

import pytest
import torch

import lumina
from lumina import modalities
from lumina.models import Backbone, NextDiT, NextDiTConfig, checkpoints as ck
from lumina.models import rope
from lumina.pipelines.tiny import randomize_weights

CONFIGS = {
    "image": NextDiTConfig(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, context_dim=16, in_channels=3, patch_size=2,
                           multiple_of=16, sample_size=8),
    "sequence": NextDiTConfig(modality="sequence", dim=32, n_layers=2, n_heads=2, n_kv_heads=1, context_dim=16,
                              in_channels=3, patch_size=2, multiple_of=16, sample_size=16),
    "volume": NextDiTConfig(modality="volume", dim=48, n_layers=2, n_heads=2, n_kv_heads=1, context_dim=16,
                            in_channels=2, patch_size=2, multiple_of=16, sample_size=8, rope_axis_dims=(8, 8, 8)),
    "volume-nocontext": NextDiTConfig(modality="volume", dim=48, n_layers=2, n_heads=2, n_kv_heads=None, context_dim=None,
                                      in_channels=2, patch_size=2, multiple_of=16, sample_size=8,
                                      rope_axis_dims=(4, 10, 10), learn_sigma=False),
}
# two samples of different sizes per modality
SAMPLES = {
    "image": [(3, 6, 8), (3, 4, 4)],
    "sequence": [(3, 12), (3, 6)],
    "volume": [(3, 2, 4, 6), (2, 2, 4, 4)],
    "volume-nocontext": [(3, 2, 4, 6), (2, 2, 4, 4)],
}


def _model(key: str) -> NextDiT:
    m = NextDiT(CONFIGS[key]).eval()
    randomize_weights(m, std=0.3, generator=torch.Generator().manual_seed(0))
    return m


def _context(cfg, B):
    if cfg.context_dim is None:
        return None, None
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[1:, 3:] = False
    return torch.randn(B, 5, cfg.context_dim), mask


def _close(a, b):
    """fp32 equality up to summation order (padding, fused vs per-token norms)."""
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(b.abs().max().item(), 1.0))


def test_registry():
    assert modalities.get("image") is modalities.ImageAdapter
    assert modalities.get("sequence") is modalities.SequenceAdapter
    assert modalities.get("volume") is modalities.VolumeAdapter
    assert {"image", "sequence", "volume"} <= set(modalities.names())
    with pytest.raises(ValueError, match="unknown `modality` 'smell'.*image"):
        modalities.get("smell")
    with pytest.raises(ValueError, match="unknown `modality`"):
        NextDiT(NextDiTConfig(modality="smell", dim=32, n_heads=2, n_kv_heads=1, n_layers=1))
    # the released model is the image adapter + backbone under the official names
    m = lumina.NextDiT(lumina.config_from_preset("NextDiT_tiny"))
    assert isinstance(m.adapter, modalities.ImageAdapter) and isinstance(m, Backbone)
    assert m.x_embedder is m.adapter.x_embedder and m.final_layer is m.adapter.final_layer
    assert {k.split(".")[0] for k in m.state_dict()} == {"x_embedder", "t_embedder", "cap_embedder", "layers",
                                                          "final_layer", "pad_token"}


@pytest.mark.parametrize("key", list(CONFIGS))
def test_forward_backward_and_padding(key):
    model, cfg = _model(key), CONFIGS[key]
    xs = [torch.randn(s) for s in SAMPLES[key]]
    t = torch.tensor([0.3, 0.8])
    feats, mask = _context(cfg, 2)
    with torch.no_grad():
        outs = model(xs, t, feats, mask)
        assert [o.shape for o in outs] == [x.shape for x in xs]
        # a padded batch computes what each sample computes alone
        for i, x in enumerate(xs):
            alone = model([x], t[i:i + 1], *(None if v is None else v[i:i + 1, :int(mask[i].sum())]
                                              for v in (feats, mask)))[0]
            _close(outs[i], alone)
        batched = model(torch.stack([xs[0], xs[0]]), t, feats, mask)
        assert batched.shape == (2, *xs[0].shape)
    model.train()
    loss = sum((o ** 2).mean() for o in model(xs, t, feats, mask))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "x_embedder" in n or "layers.1" in n)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_native_checkpoint_round_trip(key, tmp_path):
    model, ema = _model(key), _model(key)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    model.save_pretrained(tmp_path, ema_state=ema.state_dict())  # native is the default
    meta = json.loads((tmp_path / ck.NATIVE_CONFIG).read_text())
    assert meta["family"] == ck.FAMILY and meta["modality"] == model.config.modality
    assert NextDiTConfig.from_dict(meta["config"]) == model.config
    for want, kw in ((ema, {}), (model, {"ema": False})):
        loaded = NextDiT.from_pretrained(tmp_path, **kw)
        assert loaded.config == model.config
        sa, sb = loaded.state_dict(), want.state_dict()
        assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    xs = [torch.randn(s) for s in SAMPLES[key]]
    feats, mask = _context(model.config, 2)
    with torch.no_grad():
        t = torch.rand(2)
        for a, b in zip(loaded(xs, t, feats, mask), model(xs, t, feats, mask)):
            assert torch.equal(a, b)


def test_t2i_formats_refuse_other_modalities(tmp_path):
    for key in ("sequence", "volume-nocontext"):
        for fmt in ("official", "diffusers"):
            with pytest.raises(ck.CheckpointError, match="format='native'"):
                _model(key).save_pretrained(tmp_path / fmt, format=fmt)


def test_native_checkpoint_errors(tmp_path):
    _model("sequence").save_pretrained(tmp_path)
    meta = json.loads((tmp_path / ck.NATIVE_CONFIG).read_text())
    (tmp_path / ck.NATIVE_CONFIG).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ck.CheckpointError, match="format_version"):
        NextDiT.from_pretrained(tmp_path)
    (tmp_path / ck.NATIVE_CONFIG).write_text(json.dumps({**meta, "modality": "image"}))
    with pytest.raises(ck.CheckpointError, match="`modality` 'image' disagrees"):
        NextDiT.from_pretrained(tmp_path)
    smell = {**meta, "modality": "smell", "config": {**meta["config"], "modality": "smell"}}
    (tmp_path / ck.NATIVE_CONFIG).write_text(json.dumps(smell))
    with pytest.raises(ValueError, match="unknown `modality` 'smell'"):
        NextDiT.from_pretrained(tmp_path, ema=False)
    (tmp_path / ck.NATIVE_CONFIG).write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="no EMA weights"):
        NextDiT.from_pretrained(tmp_path)
    (tmp_path / ck.NATIVE_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="no weights file"):
        NextDiT.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------
# per-token conditioning and the backbone on its own
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["volume", "volume-nocontext"])
def test_clean_prefix_gives_clean_frames_the_t1_conditioning(key):
    model, cfg = _model(key), CONFIGS[key]
    x = torch.randn(2, 3, cfg.in_channels, 4, 4)
    t = torch.tensor([0.2, 0.6])
    feats, mask = _context(cfg, 2)
    with torch.no_grad():
        plain = model(x, t, feats, mask)
        _close(model(x, t, feats, mask, clean_prefix=0), plain)
        _close(model(x, t, feats, mask, clean_prefix=3), model(x, torch.ones(2), feats, mask))
        mixed = model(x, t, feats, mask, clean_prefix=[1, 0])
        _close(mixed[1], plain[1])
        assert (mixed[0] - plain[0]).abs().max() > 1e-2 * plain[0].abs().max()
    with pytest.raises(ValueError, match="`clean_prefix`"):
        model(x, t, feats, mask, clean_prefix=[1, 2, 3])


def test_backbone_tokens_to_tokens():
    cfg = CONFIGS["volume-nocontext"]
    bb = Backbone(cfg)
    randomize_weights(bb, std=0.3)
    B, L = 2, 7
    h = torch.randn(B, L, cfg.dim)
    mask = torch.ones(B, L, dtype=torch.bool)
    c = torch.randn(B, cfg.adaln_dim)
    out = bb(h, mask, None, c)  # positions None: no RoPE (a point set)
    assert out.shape == (B, L, cfg.dim)
    perm = torch.randperm(L)
    _close(bb(h[:, perm], mask, None, c), out[:, perm])  # no positions: permutation-equivariant
    _close(bb(h, mask, None, c[:, None, :].expand(B, L, -1)), out)  # per-token c, equal over tokens = per sample
    with pytest.raises(ValueError, match="`context` given but the model has no cross-attention"):
        bb(h, mask, None, c, torch.randn(B, 3, 8), torch.ones(B, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="conditioning `c`"):
        bb(h, mask, None, c[:, :5])
    with pytest.raises(ValueError, match="`kv_merge` needs one entry per layer"):
        bb(h, mask, None, c, kv_merge=[None])


# ----------------------------------------------------------------------------------------------
# RoPE from positions
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,t", [(None, None), ("ntk", None), ("time_aware", 0.1), ("time_aware", 0.9),
                                      ("smooth_time_aware", 0.4), ("frequency_aware", None)])
def test_nd_builder_is_bitwise_the_released_2d_table(method, t):
    H, W = 9, 13
    sc = None if method is None else rope.RopeScaling(method, scale=2.0)
    pos = rope.grid_positions((H, W))
    nd = rope.rope_nd(pos, (36, 36), scaling=sc, t=t, interleave=True)
    assert torch.equal(nd, rope.rope_2d(H, W, 72, scaling=sc, t=t))
    assert torch.equal(nd, rope.rope_grid((H, W), (36, 36), scaling=sc, t=t, interleave=True))


def test_nd_builder_fractional_and_per_axis_scaling():
    pos = torch.rand(4, 3) * 10  # fractional positions, 3 axes
    table = rope.rope_nd(pos, (4, 8, 6))
    assert table.shape == (4, 9) and table.dtype == torch.complex64
    want = torch.cat([rope.rope_1d(pos[:, a], d) for a, d in enumerate((4, 8, 6))], dim=-1)
    assert torch.equal(table, want)
    sc = rope.RopeScaling("linear", scale=2.0)
    part = rope.rope_nd(pos, (4, 8, 6), scaling=sc, scaled_axes=(False, True, False))
    assert torch.equal(part[:, :2], table[:, :2]) and torch.equal(part[:, 6:], table[:, 6:])
    assert torch.equal(part[:, 2:6], rope.rope_1d(pos[:, 1], 8, scaling=sc))
    # the model's volume table is the concatenated 3-D layout
    assert torch.equal(rope.rope_grid((2, 3, 4), (8, 8, 8), scaled_axes=(False, True, True)),
                       rope.rope_3d(2, 3, 4, (8, 8, 8)))
    with pytest.raises(ValueError, match="interleaved"):
        rope.rope_nd(pos, (4, 8, 6), interleave=True)


# ----------------------------------------------------------------------------------------------
# shapes and errors
# ----------------------------------------------------------------------------------------------
def test_latent_shapes():
    img, seq, vol = (NextDiT(CONFIGS[k]).adapter for k in ("image", "sequence", "volume"))
    assert img.latent_shape((64, 32), downscale=8) == (3, 8, 4)
    assert seq.latent_shape((24,)) == (3, 24)
    assert vol.latent_shape((5, 16, 8), downscale=2) == (5, 2, 8, 4)
    with pytest.raises(ValueError, match="`width` must be a positive multiple of 16"):
        img.latent_shape((64, 40), downscale=8)
    with pytest.raises(ValueError, match="`length`"):
        seq.latent_shape((7,))
    with pytest.raises(ValueError, match="`size` must be \\(frames, height, width\\)"):
        vol.latent_shape((16, 8))
    assert img.scaled_axes == (True, True) and vol.scaled_axes == (False, True, True)


@pytest.mark.parametrize("key,bad,match", [
    ("image", torch.randn(3, 8, 8), r"`x` must be a batched tensor \(B, C, H, W\)"),
    ("sequence", torch.randn(2, 3, 4, 4), r"`x` must be a batched tensor \(B, C, T\)"),
    ("volume", [torch.randn(2, 4, 4)], r"`x\[0\]` must be \(F, C, H, W\)"),
    ("image", [torch.randn(4, 4, 4)], r"`x\[0\]` must be \(3, H, W\)"),
    ("sequence", [torch.randn(3, 5)], r"`x\[0\]`: length must be multiples of the patch size 2"),
])
def test_bad_samples_name_the_argument(key, bad, match):
    with pytest.raises(ValueError, match=match):
        _model(key)(bad, torch.rand(2 if isinstance(bad, torch.Tensor) else 1), *_context(CONFIGS[key], 2 if
                    isinstance(bad, torch.Tensor) else 1))


@pytest.mark.parametrize("kw,match", [
    (dict(rope_axis_dims=(8, 6)), "`rope_axis_dims` .* must sum to the head dim"),
    (dict(rope_axis_dims=(7, 9)), "`rope_axis_dims` must be one or more positive even"),
    (dict(rope_axis_dims="16"), "`rope_axis_dims` must be a sequence"),
    (dict(modality=""), "`modality`"),
    (dict(context_dim=0), "`context_dim`"),
    (dict(n_heads=3), "`dim` .* divisible by `n_heads`"),
])
def test_bad_config_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        NextDiTConfig(**{**dict(dim=32, n_heads=2, n_kv_heads=1, n_layers=1), **kw})


def test_rope_split_must_fit_the_modality():
    with pytest.raises(ValueError, match="`rope_axis_dims` \\(8, 8\\) has 2 entries but the 'volume' modality has 3"):
        NextDiT(NextDiTConfig(modality="volume", dim=32, n_heads=2, n_kv_heads=1, n_layers=1, rope_axis_dims=(8, 8)))
    with pytest.raises(ValueError, match="does not split into 3 even RoPE shares.*rope_axis_dims"):
        NextDiT(NextDiTConfig(modality="volume", dim=32, n_heads=2, n_kv_heads=1, n_layers=1))
    with pytest.raises(ValueError, match="`cap_feats` given but the model has no cross-attention"):
        _model("volume-nocontext")(torch.randn(1, 1, 2, 4, 4), torch.rand(1), torch.randn(1, 2, 4),
                                   torch.ones(1, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------
# context drop for every layout
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,plan", [("image", ((3, 4), (2, 2))), ("sequence", ((6,), (2,))),
                                      ("volume", ((3, 2, 3), (1, 2, 2)))])
def test_context_drop_merges_along_the_pooled_axes(key, plan):
    model, cfg = _model(key), CONFIGS[key]
    x = torch.randn(2, *SAMPLES[key][0])
    t = torch.tensor([0.3, 0.6])
    feats, mask = _context(cfg, 2)
    batch = model.adapter.tokenize(list(x))
    assert (model.adapter.merge_plan(batch, 2).grid, model.adapter.merge_plan(batch, 2).factors) == plan
    with torch.no_grad():
        plain = model(x, t, feats, mask)
        assert torch.equal(model(x, t, feats, mask, context_drop=[1, 1]), plain)
        merged = model(x, t, feats, mask, context_drop=[2, 2])
    assert merged.shape == plain.shape and torch.isfinite(merged).all()
    assert (merged - plain).abs().max() > 0  # merged keys/values change the output (how much depends on the draw)
    for i in range(2):  # and each sample gets what it gets alone
        with torch.no_grad():
            alone = model(x[i:i + 1], t[i:i + 1], None if feats is None else feats[i:i + 1],
                          None if mask is None else mask[i:i + 1], context_drop=[2, 2])
        _close(merged[i:i + 1], alone)


@pytest.mark.parametrize("key", ["image", "sequence", "volume"])
def test_context_drop_over_samples_of_different_sizes(key):
    """Mixed sizes merge over an explicit cell per token: each sample gets what it gets alone."""
    model, cfg = _model(key), CONFIGS[key]
    xs = [torch.randn(s) for s in SAMPLES[key]]
    t = torch.tensor([0.3, 0.6])
    feats, mask = _context(cfg, 2)
    batch = model.adapter.tokenize(xs)
    plan = model.adapter.merge_plan(batch, 2)
    assert plan.grid is None and plan.cells.shape == batch.mask.shape and plan.cells.max() < plan.n_cells
    with torch.no_grad():
        outs = model(xs, t, feats, mask, context_drop=[2, 1])
        for i, x in enumerate(xs):
            alone = model([x], t[i:i + 1], feats[i:i + 1, :int(mask[i].sum())], mask[i:i + 1, :int(mask[i].sum())],
                          context_drop=[2, 1])[0]
            _close(outs[i], alone)
        with pytest.raises(ValueError, match=f"{key}s of one size"):
            model(xs, t, feats, mask, context_drop=[2, 1], context_drop_method="tome")


def test_module_order_is_official_so_seeded_init_matches_the_released_code():
    from lumina.models.nextdit import NextDiT, config_from_preset

    model = NextDiT(config_from_preset("NextDiT_tiny"))
    assert list(dict(model.named_children())) == ["x_embedder", "t_embedder", "cap_embedder", "layers", "final_layer"]
    assert [n for n, _ in model.layers[0].attention.named_parameters()] == [
        "gate", "wq.weight", "wk.weight", "wv.weight", "wk_y.weight", "wv_y.weight", "wo.weight", "q_norm.weight",
        "q_norm.bias", "k_norm.weight", "k_norm.bias", "ky_norm.weight", "ky_norm.bias"]
