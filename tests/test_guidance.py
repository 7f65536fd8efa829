"""One CFG implementation (lumina.sampling.Guidance): cfg_velocity and the text-to-image pipeline give the same
velocities, the one rule for cfg = 1 and truncation, no host read of t when t_value is given, and emulated CUDA
graphs reproducing eager sampling (bundled default model, CPU)."""
import contextlib

import pytest
import torch

import lumina
from lumina.pipelines import base as pipeline_base
from lumina.sampling import Guidance, GraphedVelocity, cfg_velocity, sample


class NoHostRead(torch.Tensor):
    """A time tensor that fails the test if anything reads it back to the host (a sync inside a CUDA graph)."""

    def _no(self, *args):
        raise AssertionError("host read of t")

    item = tolist = __float__ = __bool__ = __int__ = __index__ = _no


T32_07 = float(torch.tensor(0.7))  # the float32 grid point 0.7 (0.699999988...)


@pytest.fixture(scope="module")
def pipe():
    return lumina.load_pipeline(device="cpu")


# ----------------------------------------------------------------------------------------------
# the rule
# ----------------------------------------------------------------------------------------------
def test_the_rule_for_cfg_one_and_truncation():
    assert not Guidance(1.0).guided and not Guidance(1.0, truncation=0.5).needs_time
    assert not Guidance(1.0, truncation=0.5).applies(0.1)  # cfg = 1: never guided
    assert Guidance(0.0).applies(None) and Guidance(4.0).applies(0.99)  # no truncation: always, no time needed
    g = Guidance(4.0, truncation=0.7)
    assert g.needs_time and g.applies(0.69) and not g.applies(0.8)
    assert not g.applies(T32_07, torch.float32)  # t >= tau in t's dtype: the float32 grid point switches
    assert g.applies(T32_07, torch.float64)  # in float64 that t is below 0.7
    with pytest.raises(ValueError, match="t_value"):
        g.applies(None)
    assert Guidance("4", 3, 1.0, 0.5) == Guidance(4.0, 3, 1.0, 0.5)  # checked and normalised: a cache key
    assert len({Guidance(4.0), Guidance(4.0), Guidance(4.0, renorm=1.0)}) == 2
    for kwargs, name in [(dict(scale=-1), "`cfg_scale`"), (dict(channels=0), "`channels`"),
                         (dict(renorm=0.0), "`renorm`"), (dict(truncation=2.0), "`truncation`")]:
        with pytest.raises(ValueError, match=name):
            Guidance(**kwargs)


def _models(cond, uncond, log):
    def doubled(xx, tt):
        log.append(("doubled", xx.shape[0]))
        return torch.cat([cond, uncond]).to(xx.dtype)

    def single(x, t):
        log.append(("cond", x.shape[0]))
        return cond.to(x.dtype)

    return doubled, single


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unguided_steps_are_the_conditional_velocity_exactly(dtype):
    """cfg = 1 and t >= tau follow one rule: the conditional velocity as the model gives it (no channel rule, no
    renorm, no float32 cast); with cond_fn only the conditional half is computed."""
    cond, uncond = torch.randn(2, 4, 3, 3), 10 * torch.randn(2, 4, 3, 3)
    x, t = torch.randn(2, 4, 3, 3, dtype=dtype), torch.full((2,), 0.8)
    for cfg, trunc in [(1.0, None), (1.0, 0.5), (4.0, 0.5), (0.0, 0.8)]:
        for use_cond in (False, True):
            log = []
            doubled, single = _models(cond, uncond, log)
            fn = cfg_velocity(doubled, cfg, channels=3, renorm=0.5, truncation=trunc,
                              cond_fn=single if use_cond else None)
            v = fn(x, t)
            assert v.dtype == dtype and torch.equal(v, cond.to(dtype)), (cfg, trunc, use_cond)
            assert log == [("cond", 2)] if use_cond else log == [("doubled", 4)]
    # a guided step: the channel rule and renorm apply, in float32
    log = []
    v = cfg_velocity(*_models(cond, uncond, log)[:1], 4.0, channels=3, truncation=0.9)(x, t)
    assert v.dtype == torch.float32 and torch.equal(v[:, 3], cond.to(dtype).float()[:, 3])
    assert not torch.equal(v[:, :3], cond.to(dtype).float()[:, :3]) and log == [("doubled", 4)]


def test_t_value_avoids_every_host_read():
    cond, uncond = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    x = torch.randn(2, 4, 3, 3)
    for t_value in (0.3, T32_07, 0.9):
        t = torch.full((2,), t_value)
        for cfg in (0.0, 1.0, 4.0):
            fn = cfg_velocity(lambda xx, tt: torch.cat([cond, uncond]), cfg, channels=2, renorm=1.0, truncation=0.7)
            with pytest.raises(AssertionError, match="host read") if cfg != 1.0 else contextlib.nullcontext():
                fn(x, t.as_subclass(NoHostRead))  # without t_value, truncation reads t back
            got = fn(x, t.as_subclass(NoHostRead), t_value=t_value)
            assert torch.equal(got.as_subclass(torch.Tensor), fn(x, t))


# ----------------------------------------------------------------------------------------------
# the pipeline and cfg_velocity: one implementation
# ----------------------------------------------------------------------------------------------
OPTIONS = [dict(), dict(cfg_channels=2), dict(cfg_renorm=0.5), dict(cfg_truncation=0.5), dict(cfg_truncation=0.7),
           dict(cfg_channels=2, cfg_renorm=1.0, cfg_truncation=0.5)]


@torch.inference_mode()
@pytest.mark.parametrize("cfg", [0.0, 1.0, 4.0])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_pipeline_and_cfg_velocity_give_identical_velocities(pipe, monkeypatch, cfg, options):
    """The pipeline's velocity (eager, and the evaluation a CUDA graph captures, given t_value and a t that must not
    be read) equals cfg_velocity's for the same model function, before, at and after the truncation time."""
    calls, seen = [], {}

    def fake_forward(x, t, feats, mask, **kw):  # a row-wise model: cond and uncond differ through the caption
        calls.append(x.shape[0])
        seen["feats"] = feats
        t = t.as_subclass(torch.Tensor)
        a = 1.0 + feats[:, 0].float().mean(-1)
        b = feats[:, 1].float().mean(-1) * 3.0
        return x * a.view(-1, 1, 1, 1) + (t * b).view(-1, 1, 1, 1) * torch.linspace(-1, 1, x.shape[1]).view(1, -1, 1, 1)

    captured = {}

    def fake_sample(velocity_fn, x0, **kw):
        captured["velocity"] = velocity_fn
        return x0

    monkeypatch.setattr(pipe.transformer, "forward", fake_forward)
    monkeypatch.setattr(pipeline_base, "sample", fake_sample)
    kw = dict(cfg=cfg, seed=1, output_type="latent", progress=False, proportional_attn=False, **options)
    x = pipe(["a red circle", "a green square"], "blurry", cuda_graphs=False, **kw)
    eager = captured["velocity"]
    pipe(["a red circle", "a green square"], "blurry", cuda_graphs="emulate", **kw)
    graphed = captured["velocity"]
    assert isinstance(graphed, GraphedVelocity)
    opts = dict(channels=options.get("cfg_channels"), renorm=options.get("cfg_renorm"),
                truncation=options.get("cfg_truncation"))
    B = x.shape[0]
    for t_value in (0.3, 0.5, T32_07, 0.9):
        t = torch.full((B,), t_value)
        for name, run in [("eager", lambda: eager(x, t)),
                          ("graph fn", lambda: graphed.fn(x, t.as_subclass(NoHostRead), t_value, *graphed.inputs))]:
            calls.clear()
            got = run()
            feats = seen["feats"]  # the rows the pipeline used: [prompts, negatives] or the prompts alone
            want_calls = list(calls)
            calls.clear()
            ref = cfg_velocity(lambda xx, tt: fake_forward(xx, tt, feats[:xx.shape[0]], None), cfg, **opts,
                               cond_fn=lambda x1, t1: fake_forward(x1, t1, feats[:B], None))
            want = ref(x, t.as_subclass(NoHostRead), t_value=t_value)
            assert torch.equal(got, want), (name, t_value)
            assert calls == want_calls  # the same model calls: 2B rows when guided, else B
            guided = cfg != 1.0 and not (opts["truncation"] is not None and t_value >= float(
                torch.tensor(opts["truncation"])))
            assert calls == [2 * B if guided else B], (name, t_value, calls)


# ----------------------------------------------------------------------------------------------
# emulated CUDA graphs reproduce eager sampling
# ----------------------------------------------------------------------------------------------
@torch.inference_mode()
@pytest.mark.parametrize("extra,graphs", [
    (dict(cfg=1.0), 1),
    (dict(cfg=0.0, cfg_channels=2), 1),
    (dict(cfg=4.0, cfg_renorm=1.0, cfg_truncation=0.7), 2),  # guided until the float32 grid point 0.7, then not
    (dict(cfg=1.0, cfg_truncation=0.5), 1),  # cfg = 1: truncation decides nothing
])
def test_emulated_graphs_reproduce_eager_sampling(pipe, extra, graphs):
    kw = dict(steps=10, solver="euler", shift=1.0, seed=4, output_type="latent", progress=False, **extra)
    pipe._graph_cache.clear()
    eager = pipe("a blue square on a red background", cuda_graphs=False, **kw)
    graphed = pipe("a blue square on a red background", cuda_graphs="emulate", **kw)
    run = pipe.last_run["cuda_graphs"]
    assert torch.equal(eager, graphed)
    assert run["captures"] == graphs and run["replays"] == 10


@torch.inference_mode()
def test_truncation_in_the_sampler_matches_a_hand_written_loop(pipe):
    """Euler with truncation at a grid point: guided steps at t < 0.7, conditional-only steps from t = 0.7 on."""
    kw = dict(steps=10, solver="euler", shift=1.0, seed=2, progress=False, proportional_attn=False,
              rope_scaling="none", cfg_truncation=0.7)
    got = pipe("a red circle", "", output_type="latent", **kw)
    feats, mask = pipe.encode_prompts(["a red circle"], [""])
    model = pipe.transformer

    def doubled(xx, tt):
        return model(xx, tt, feats, mask)

    x0 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    want = sample(cfg_velocity(doubled, 4.0, truncation=0.7, cond_fn=lambda x, t: model(x, t, feats[:1], mask[:1])),
                  x0, steps=10, solver="euler", shift=1.0, progress=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
