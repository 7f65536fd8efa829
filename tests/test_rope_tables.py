"""RoPE tables (lumina.models.rope): against diffusers and the official formula, scaling rules, 3D layout,
rotation through lumina_kernels.apply_rope, cache, bad input."""
import math

import pytest
import torch

import lumina_kernels as lk
from lumina.models import rope
from lumina.models.rope import RopeScaling, axis_frequencies, rope_1d, rope_2d, rope_3d


def get_2d_rotary_pos_embed_lumina(*args, **kwargs):
    """diffusers' table (the optional reference peer), imported only by the tests that compare with it."""
    peer = pytest.importorskip("diffusers.models.embeddings", reason="diffusers (the optional reference peer) not installed")
    return peer.get_2d_rotary_pos_embed_lumina(*args, **kwargs)

# float32 angles (official code, diffusers) vs our float64 angles rounded once: ~1e-5 at position 383
ATOL_TABLE = 2e-4


def _randint(lo, hi):
    return int(torch.randint(lo, hi + 1, ()).item())


def _uniform(lo, hi):
    return lo + (hi - lo) * float(torch.rand(()).item())


def _grid():
    """A random non-square grid (catches an h/w swap)."""
    h = _randint(1, 80)
    w = _randint(1, 80)
    while w == h:
        w = _randint(1, 80)
    return h, w


def official_precompute_freqs_cis(dim, end=384, theta=10000.0, rope_scaling_factor=1.0, ntk_factor=1.0):
    """Re-derivation of the official Lumina-Next precompute_freqs_cis from the facts file (float32, like theirs):
    per-axis freqs 1/theta'^(arange(0, dim, 4)[:dim/4] / dim), theta' = theta * ntk, positions / linear factor,
    h and w tables interleaved pair by pair, a (end, end, dim/2) grid."""
    theta = theta * ntk_factor
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    pos = torch.arange(end, dtype=torch.float32) / rope_scaling_factor
    ang = torch.outer(pos, freqs).float()
    cis = torch.polar(torch.ones_like(ang), ang)
    cis_h = cis.view(end, 1, dim // 4, 1).repeat(1, end, 1, 1)
    cis_w = cis.view(1, end, dim // 4, 1).repeat(end, 1, 1, 1)
    return torch.cat([cis_h, cis_w], dim=-1).flatten(2)


# ----------------------------------------------------------------------------------------------
# 2D table: diffusers and the official formula
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["none", "linear", "ntk"])
@pytest.mark.parametrize("head_dim", [72, 64, 8])
def test_rope_2d_matches_diffusers_and_official(method, head_dim):
    H, W = _grid()
    s = _uniform(1.05, 3.0)
    scaling = RopeScaling(method, scale=s) if method != "none" else None
    ours = rope_2d(H, W, head_dim, scaling=scaling)
    assert ours.dtype == torch.complex64 and ours.shape == (H * W, head_dim // 2)

    lin = s if method == "linear" else 1.0
    ntk = s if method == "ntk" else 1.0
    theirs = get_2d_rotary_pos_embed_lumina(head_dim, H, W, linear_factor=lin, ntk_factor=ntk)
    assert theirs.shape == (H, W, head_dim // 2)
    torch.testing.assert_close(ours, theirs.reshape(H * W, -1), atol=ATOL_TABLE, rtol=0)

    official = official_precompute_freqs_cis(head_dim, rope_scaling_factor=lin, ntk_factor=ntk)[:H, :W]
    torch.testing.assert_close(ours, official.flatten(0, 1), atol=ATOL_TABLE, rtol=0)


def test_rope_2d_layout_is_interleaved_row_major():
    # direct check of a few entries: row r = h * W + w, pair 2j -> h * theta_j, pair 2j+1 -> w * theta_j
    H, W, D = _grid() + (72,)
    table = rope_2d(H, W, D)
    theta_j = torch.tensor([10000.0 ** (-2 * j / 36) for j in range(18)], dtype=torch.float64)
    for _ in range(20):
        h, w = _randint(0, H - 1), _randint(0, W - 1)
        row = table[h * W + w].to(torch.complex128)
        torch.testing.assert_close(row[0::2], torch.polar(torch.ones(18, dtype=torch.float64), h * theta_j),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(row[1::2], torch.polar(torch.ones(18, dtype=torch.float64), w * theta_j),
                                   atol=1e-5, rtol=0)


def test_axis_frequencies_match_official_head_dim_form():
    # official: 1/theta^(arange(0, head_dim, 4)[:head_dim//4] / head_dim) with axis_dim = head_dim / 2
    for head_dim in (72, 96, 64, 12):
        official = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 4)[: head_dim // 4].double() / head_dim)
        torch.testing.assert_close(axis_frequencies(head_dim // 2), official, atol=0, rtol=1e-13)
    assert axis_frequencies(36).dtype == torch.float64 and axis_frequencies(36).shape == (18,)


def test_rope_1d_any_position_shape():
    pos = torch.rand(3, 5) * 100
    out = rope_1d(pos, 36)
    assert out.shape == (3, 5, 18) and out.dtype == torch.complex64
    want = torch.polar(torch.ones(3, 5, 18, dtype=torch.float64), pos.double()[..., None] * axis_frequencies(36))
    torch.testing.assert_close(out.to(torch.complex128), want, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------
# scaling rules
# ----------------------------------------------------------------------------------------------
def test_time_aware_switches_between_linear_and_ntk():
    H, W = _grid()
    s = _uniform(1.1, 4.0)
    ws = _uniform(0.1, 0.9)
    sc = RopeScaling("time_aware", scale=s, scale_watershed=ws)
    linear = rope_2d(H, W, 72, scaling=RopeScaling("linear", scale=s))
    ntk = rope_2d(H, W, 72, scaling=RopeScaling("ntk", scale=s))
    assert not torch.equal(linear, ntk)
    for t in (0.0, _uniform(0.0, ws) * 0.999, ws * 0.999):
        assert torch.equal(rope_2d(H, W, 72, scaling=sc, t=t), linear), t
    for t in (ws, _uniform(ws, 1.0), 1.0):
        assert torch.equal(rope_2d(H, W, 72, scaling=sc, t=t), ntk), t
    # diffusers' pipeline rule (linear_factor below the watershed, ntk_factor above) agrees
    theirs_lo = get_2d_rotary_pos_embed_lumina(72, H, W, linear_factor=s, ntk_factor=1.0).reshape(H * W, -1)
    theirs_hi = get_2d_rotary_pos_embed_lumina(72, H, W, linear_factor=1.0, ntk_factor=s).reshape(H * W, -1)
    torch.testing.assert_close(rope_2d(H, W, 72, scaling=sc, t=0.0), theirs_lo, atol=ATOL_TABLE, rtol=0)
    torch.testing.assert_close(rope_2d(H, W, 72, scaling=sc, t=1.0), theirs_hi, atol=ATOL_TABLE, rtol=0)


def _paper_smooth(d, b, s, t):
    d_t = (d - 1) * t + 1
    bp = b * s ** (d / d_t)
    return torch.tensor([max(bp ** (-2 * i / d), b ** (-2 * i / d) / s) for i in range(d // 2)], dtype=torch.float64)


def _paper_frequency_aware(d, b, s, train_len):
    d_target = d * math.log(train_len / (2 * math.pi), b)
    bp = b * s ** (d / d_target)
    return torch.tensor([max(bp ** (-2 * i / d), b ** (-2 * i / d) / s) for i in range(d // 2)], dtype=torch.float64)


@pytest.mark.parametrize("d", [36, 32, 64])
def test_smooth_time_aware(d):
    s = _uniform(1.1, 4.0)
    sc = RopeScaling("smooth_time_aware", scale=s)
    pi = axis_frequencies(d, scaling=RopeScaling("linear", scale=s))
    ntk = axis_frequencies(d, scaling=RopeScaling("ntk", scale=s))
    base = axis_frequencies(d)

    # t = 0: PI on every frequency but frequency 0, whose exponent is 0 (b'^0 = 1 > 1/s): it stays unscaled
    f0 = axis_frequencies(d, scaling=sc, t=0.0)
    assert torch.equal(f0[1:], pi[1:])
    assert f0[0].item() == 1.0 == base[0].item()
    # t = 1: NTK with base b*s, and the max rule picks the NTK side (never below PI)
    f1 = axis_frequencies(d, scaling=sc, t=1.0)
    assert torch.equal(f1, ntk)
    assert torch.all(ntk >= pi) and torch.all(ntk[1:] > pi[1:])
    # the formula as written, independently evaluated, at a random t
    t = _uniform(0.0, 1.0)
    torch.testing.assert_close(axis_frequencies(d, scaling=sc, t=t), _paper_smooth(d, 10000.0, s, t),
                               atol=0, rtol=1e-12)
    # monotone non-decreasing in t for every frequency, between PI and NTK
    ts = sorted([0.0, 1.0] + [_uniform(0.0, 1.0) for _ in range(30)])
    fs = torch.stack([axis_frequencies(d, scaling=sc, t=t) for t in ts])  # (T, d/2)
    assert torch.all(fs[1:] >= fs[:-1])
    assert torch.all(fs >= pi) and torch.all(fs <= ntk * (1 + 1e-15))
    assert torch.all(fs[-1, 1:] > fs[0, 1:])  # it does move


@pytest.mark.parametrize("d,train_len", [(36, 64), (32, 128), (64, 64)])
def test_frequency_aware(d, train_len):
    s = _uniform(1.1, 4.0)
    sc = RopeScaling("frequency_aware", scale=s, train_len=train_len)
    f = axis_frequencies(d, scaling=sc)
    pi = axis_frequencies(d, scaling=RopeScaling("linear", scale=s))
    base = axis_frequencies(d)
    d_target = d * math.log(train_len / (2 * math.pi), 10000.0)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    low = two_i > d_target  # from d_target on (wavelength longer than the training length): exactly PI
    high = two_i < d_target
    assert low.any() and high.any()
    assert torch.equal(f[low], pi[low])
    assert torch.all(f[high] > pi[high])  # NTK-like: above PI ...
    assert torch.all(f[high] <= base[high])  # ... never above the unscaled frequency
    assert f[0].item() == 1.0
    torch.testing.assert_close(f, _paper_frequency_aware(d, 10000.0, s, train_len), atol=0, rtol=1e-12)
    assert f.shape == (d // 2,)
    # no t needed, and t does not change it
    assert torch.equal(axis_frequencies(d, scaling=sc, t=_uniform(0, 1)), f)


@pytest.mark.parametrize("method", rope.METHODS)
def test_no_scaling_at_or_below_training_size(method):
    s = 1.0 if torch.rand(()) < 0.5 else _uniform(0.2, 1.0)
    H, W = _grid()
    t = _uniform(0.0, 1.0)
    plain = rope_2d(H, W, 72)
    sc = RopeScaling(method, scale=s)
    assert not sc.active
    assert torch.equal(rope_2d(H, W, 72, scaling=sc, t=t), plain)
    assert torch.equal(axis_frequencies(36, scaling=sc, t=t), axis_frequencies(36))
    for s_edge in (1.0, 0.5):
        assert torch.equal(rope_2d(H, W, 72, scaling=RopeScaling(method, scale=s_edge), t=t), plain)


@pytest.mark.parametrize("method", ["linear", "ntk", "time_aware", "smooth_time_aware", "frequency_aware"])
def test_every_method_scales_above_training_size(method):
    f = axis_frequencies(36, scaling=RopeScaling(method, scale=2.0), t=0.5)
    assert not torch.equal(f, axis_frequencies(36))
    assert torch.all(f <= axis_frequencies(36))  # extrapolation only ever slows rotations down


def test_for_resolution():
    sc = RopeScaling.for_resolution("ntk", 2048, 1024)
    assert sc.method == "ntk" and sc.scale == pytest.approx(math.sqrt(2.0))
    sc = RopeScaling.for_resolution("time_aware", 1536, 1536, scale_watershed=1.0)
    assert sc.scale == pytest.approx(1.5) and sc.scale_watershed == 1.0
    assert RopeScaling.for_resolution("linear", 512, 512).scale == pytest.approx(0.5)
    assert RopeScaling.for_resolution("linear", 128, 128, train_size=64).scale == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------
# 3D tables
# ----------------------------------------------------------------------------------------------
def _expected_3d(F, H, W, dims, C, theta=10000.0):
    rows = [(j, 0, 0) for j in range(C)]
    rows += [(C + f, h, w) for f in range(F) for h in range(H) for w in range(W)]
    out = []
    for p in rows:
        angles = []
        for a, d in enumerate(dims):
            angles += [p[a] * theta ** (-2 * i / d) for i in range(d // 2)]
        out.append(angles)
    ang = torch.tensor(out, dtype=torch.float64)
    return torch.polar(torch.ones_like(ang), ang)


@pytest.mark.parametrize("F,C", [(1, 0), (1, 7), (3, 0), (2, 5)])
def test_rope_3d_layout(F, C):
    H, W = _randint(1, 6), _randint(1, 6)
    dims = (2 * _randint(1, 8), 2 * _randint(1, 8), 2 * _randint(1, 8))
    table = rope_3d(F, H, W, dims, caption_len=C)
    assert table.dtype == torch.complex64 and table.shape == (C + F * H * W, sum(dims) // 2)
    torch.testing.assert_close(table.to(torch.complex128), _expected_3d(F, H, W, dims, C), atol=1e-5, rtol=0)
    n0, n1 = dims[0] // 2, dims[1] // 2
    # caption rows: zero angle on axes 1 and 2; image rows: axis 0 at caption_len + frame
    assert torch.all(table[:C, n0:] == 1)
    pos = rope.grid_positions_3d(F, H, W, C)
    assert pos.shape == (C + F * H * W, 3)
    assert torch.equal(pos[:C, 0], torch.arange(C)) and torch.all(pos[:C, 1:] == 0)
    assert torch.equal(pos[C:, 0].unique(), torch.arange(F) + C)
    assert pos[C:, 1].max().item() == H - 1 and pos[C:, 2].max().item() == W - 1
    assert torch.equal(table[C:C + H * W, :n0], table[C:C + 1, :n0].expand(H * W, n0))


def test_rope_3d_single_frame_spatial_axes_equal_the_2d_table():
    H, W = _grid()
    d = 36
    for scaling, t in ((None, None), (RopeScaling("time_aware", scale=_uniform(1.1, 3.0)), _uniform(0, 1)),
                       (RopeScaling("smooth_time_aware", scale=_uniform(1.1, 3.0)), _uniform(0, 1))):
        t3 = rope_3d(1, H, W, (8, d, d), scaling=scaling, t=t)
        t2 = rope_2d(H, W, 2 * d, scaling=scaling, t=t)  # interleaved [h0, w0, h1, w1, ...]
        assert torch.all(t3[:, :4] == 1)  # axis 0 at position 0
        assert torch.equal(t3[:, 4:4 + d // 2], t2[:, 0::2])
        assert torch.equal(t3[:, 4 + d // 2:], t2[:, 1::2])


def test_rope_3d_scales_spatial_axes_only_by_default():
    sc = RopeScaling("linear", scale=2.0)
    plain = rope_3d(3, 4, 5, (16, 16, 16), caption_len=2)
    scaled = rope_3d(3, 4, 5, (16, 16, 16), scaling=sc, caption_len=2)
    assert torch.equal(scaled[:, :8], plain[:, :8])
    assert not torch.equal(scaled[:, 8:], plain[:, 8:])
    all_axes = rope_3d(3, 4, 5, (16, 16, 16), scaling=sc, caption_len=2, scaled_axes=(True, True, True))
    assert not torch.equal(all_axes[:, :8], plain[:, :8])
    # rope_nd over the same positions gives the same table
    pos = rope.grid_positions_3d(3, 4, 5, 2)
    assert torch.equal(rope.rope_nd(pos, (16, 16, 16), scaling=sc, scaled_axes=(False, True, True)), scaled)


# ----------------------------------------------------------------------------------------------
# tables through the kernel: the relative-position property
# ----------------------------------------------------------------------------------------------
def _rotated_dots(table, D):
    L = table.shape[0]
    q = torch.randn(D)
    k = torch.randn(D)
    Q = lk.apply_rope(q.expand(1, L, 1, D).contiguous(), table)[0, :, 0].double()  # (L, D)
    K = lk.apply_rope(k.expand(1, L, 1, D).contiguous(), table)[0, :, 0].double()
    return Q @ K.T, q.double(), k.double()


def _dot_from_offsets(q, k, angle_diff):
    """<R(a) q, R(b) k> = sum_i Re(qc_i * conj(kc_i) * exp(i (a_i - b_i))), with pairs (x[2i], x[2i+1])."""
    qc = torch.complex(q[0::2], q[1::2])
    kc = torch.complex(k[0::2], k[1::2])
    return (qc * kc.conj() * torch.exp(1j * angle_diff)).real.sum(-1)


@pytest.mark.parametrize("scaling,t", [(None, None), (RopeScaling("smooth_time_aware", scale=2.5), 0.4),
                                       (RopeScaling("frequency_aware", scale=1.7), None)])
def test_apply_rope_with_2d_table_depends_only_on_offsets(scaling, t):
    H, W, D = _randint(2, 9), _randint(2, 9), 72
    table = rope_2d(H, W, D, scaling=scaling, t=t)
    M, q, k = _rotated_dots(table, D)  # M[p, p']
    f = axis_frequencies(D // 2, scaling=scaling, t=t)
    hh, ww = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    hh, ww = hh.reshape(-1).double(), ww.reshape(-1).double()
    dh = hh[:, None] - hh[None, :]  # (L, L)
    dw = ww[:, None] - ww[None, :]
    diff = torch.stack([dh[..., None] * f, dw[..., None] * f], dim=-1).flatten(-2)  # interleaved, (L, L, D/2)
    want = _dot_from_offsets(q, k, diff)
    torch.testing.assert_close(M, want, atol=2e-3, rtol=1e-4)
    # the same offset at two places gives the same dot product
    if H > 2 and W > 2:
        assert M[1 * W + 2, 0 * W + 1].item() == pytest.approx(M[2 * W + 2, 1 * W + 1].item(), abs=2e-3)


def test_apply_rope_with_3d_table_depends_only_on_offsets():
    F, H, W, C = 2, 3, 4, 5
    dims = (8, 12, 12)
    table = rope_3d(F, H, W, dims, caption_len=C)
    M, q, k = _rotated_dots(table, sum(dims))
    pos = rope.grid_positions_3d(F, H, W, C).double()
    d = pos[:, None, :] - pos[None, :, :]  # (L, L, 3)
    diff = torch.cat([d[..., a:a + 1] * axis_frequencies(dims[a]) for a in range(3)], dim=-1)
    torch.testing.assert_close(M, _dot_from_offsets(q, k, diff), atol=2e-3, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------
def test_cache_shares_tables_and_can_be_cleared():
    rope.rope_cache_clear()
    a = rope_2d(7, 9, 72)
    assert rope_2d(7, 9, 72) is a
    # every method at s <= 1 and both sides of the official switch map onto few entries
    assert rope_2d(7, 9, 72, scaling=RopeScaling("ntk", scale=0.8)) is a
    sc = RopeScaling("time_aware", scale=2.0, scale_watershed=0.3)
    lo = rope_2d(7, 9, 72, scaling=sc, t=0.1)
    assert rope_2d(7, 9, 72, scaling=sc, t=0.2) is lo
    assert rope_2d(7, 9, 72, scaling=RopeScaling("linear", scale=2.0)) is lo
    assert rope_2d(7, 9, 72, scaling=sc, t=0.5) is not lo
    info = rope.rope_cache_info()["tables"]
    assert info.hits == 4 and info.misses == 3
    b = rope_3d(2, 3, 4, (8, 8, 8), caption_len=3)
    assert rope_3d(2, 3, 4, (8, 8, 8), caption_len=3) is b
    assert rope_2d(7, 9, 72, device="cpu") is a
    rope.rope_cache_clear()
    assert rope_2d(7, 9, 72) is not a
    assert torch.equal(rope_2d(7, 9, 72), a)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
BAD = [
    (lambda: axis_frequencies(35), "axis_dim"),
    (lambda: axis_frequencies(0), "axis_dim"),
    (lambda: rope_1d(torch.arange(4), 7), "axis_dim"),
    (lambda: rope_1d([0, 1], 8), "positions"),
    (lambda: rope_2d(4, 4, 70), "head_dim"),
    (lambda: rope_2d(4, 4, 73), "head_dim"),
    (lambda: rope_2d(0, 4, 72), "height"),
    (lambda: rope_2d(4, 2.5, 72), "width"),
    (lambda: rope_3d(1, 2, 2, (32, 31, 32)), r"axis_dims\[1\]"),
    (lambda: rope_3d(1, 2, 2, (32, 32)), "axis_dims"),
    (lambda: rope_3d(0, 2, 2, (8, 8, 8)), "frames"),
    (lambda: rope_3d(1, 2, 2, (8, 8, 8), caption_len=-1), "caption_len"),
    (lambda: RopeScaling("yarn", scale=2.0), "method"),
    (lambda: RopeScaling("linear", scale=-2.0), "scale"),
    (lambda: RopeScaling("linear", scale=0.0), "scale"),
    (lambda: RopeScaling("ntk", scale=float("nan")), "scale"),
    (lambda: RopeScaling("frequency_aware", scale=2.0, train_len=4), "train_len"),
    (lambda: RopeScaling.for_resolution("ntk", -1, 1024), "height"),
    (lambda: axis_frequencies(36, scaling=RopeScaling("time_aware", scale=2.0)), "`t`"),
    (lambda: axis_frequencies(36, scaling=RopeScaling("smooth_time_aware", scale=2.0)), "`t`"),
    (lambda: rope_2d(4, 4, 72, scaling=RopeScaling("time_aware", scale=0.5)), "`t`"),
    (lambda: rope_3d(1, 2, 2, (8, 8, 8), scaling=RopeScaling("time_aware", 2.0), scaled_axes=(0, 0, 0)), "`t`"),
    (lambda: axis_frequencies(36, t=1.5), "`t`"),
    (lambda: rope_2d(4, 4, 72, scaling=RopeScaling("ntk", scale=2.0), t=-0.1), "`t`"),
    (lambda: axis_frequencies(36, t=float("nan")), "`t`"),
    (lambda: axis_frequencies(36, theta=1.0), "theta"),
    (lambda: axis_frequencies(36, scaling="ntk"), "scaling"),
]


@pytest.mark.parametrize("call,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
