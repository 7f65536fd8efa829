"""The text-to-image pipeline on tiny random parts (Gemma + tokenizer made in code, AutoencoderKL, NextDiT):
LuminaPipeline, lumina.generate and the `lumina generate` CLI, on CPU."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lumina
from lumina.cli import main as cli_main
from lumina.models.nextdit import NextDiT, config_from_preset
from lumina.pipelines import LuminaPipeline, PipelineConfig, TextEncoder, VAECodec
from lumina.pipelines.text_to_image import GenerationDefaults
from lumina.pipelines.tiny import build_tiny_gemma, build_tiny_vae, randomize_weights
from lumina.sampling import cfg_velocity, sample

REPO = Path(__file__).resolve().parent.parent


def _random_transformer(**overrides) -> NextDiT:
    model = NextDiT(config_from_preset("NextDiT_tiny", **overrides)).eval()
    randomize_weights(model, std=0.2, generator=torch.Generator().manual_seed(1234))
    return model


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    """A lumina pipeline directory: transformer/ (official format, with EMA), text_encoder/, vae/."""
    root = tmp_path_factory.mktemp("pipe")
    build_tiny_gemma(root / "text_encoder")
    build_tiny_vae(root / "vae")
    model = _random_transformer()
    model.save_pretrained(root / "transformer", format="official", ema_state=model.state_dict())
    return root


@pytest.fixture(scope="module")
def pipe(pipe_dir) -> LuminaPipeline:
    return LuminaPipeline.from_pretrained(pipe_dir, device="cpu")


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


# ----------------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------------
def test_pipeline_parts_and_defaults(pipe):
    assert pipe.multiple == 4 and pipe.default_size == 32  # tiny VAE downscale 2 x patch 2; 16 latents x 2
    assert pipe.dtype == torch.float32 and pipe.device.type == "cpu"
    assert isinstance(pipe.codec, VAECodec) and pipe.codec.scaling_factor == pytest.approx(0.13025)
    d = pipe.config.defaults
    assert (d.steps, d.solver, d.shift, d.cfg, d.rope_scaling, d.scale_watershed) == (30, "midpoint", 4.0, 4.0,
                                                                                      "time_aware", 0.3)


def test_generates_pil_batch(pipe):
    images = pipe(["a red circle", "a blue square on green"], steps=2, seed=0, num_images_per_prompt=2,
                  progress=False)
    assert len(images) == 4
    for img in images:
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    a = [_arr(i) for i in images]
    assert a[0].std() > 1  # not a flat image
    assert np.abs(a[0] - a[1]).max() > 0  # two images of one prompt differ (different noise)
    assert np.abs(a[0] - a[2]).max() > 0


def test_seed_reproduces_and_non_square(pipe):
    kw = dict(steps=2, solver="euler", progress=False, height=24, width=40)
    a = pipe("a cat", seed=7, **kw)[0]
    b = pipe("a cat", seed=7, **kw)[0]
    c = pipe("a cat", seed=8, **kw)[0]
    assert a.size == (40, 24)
    assert np.array_equal(_arr(a), _arr(b))
    assert not np.array_equal(_arr(a), _arr(c))


def test_latents_equal_a_hand_written_sampler(pipe):
    """The pipeline is exactly: encode [prompt, negative] -> CFG velocity -> sample from CPU noise -> decode."""
    prompt, neg, seed, cfg = "a small red circle", "blurry", 3, 2.5
    got = pipe(prompt, neg, steps=3, solver="rk4", shift=2.0, cfg=cfg, seed=seed, output_type="latent",
               progress=False, proportional_attn=False)
    feats, mask = pipe.text_encoder.encode([prompt, neg])
    model = pipe.transformer

    def doubled(x, t):
        return model(x, t, feats, mask)

    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        want = sample(cfg_velocity(doubled, cfg), x0, steps=3, solver="rk4", shift=2.0, progress=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    images = pipe(prompt, neg, steps=3, solver="rk4", shift=2.0, cfg=cfg, seed=seed, output_type="pt",
                  progress=False, proportional_attn=False)
    with torch.inference_mode():
        torch.testing.assert_close(images, pipe.codec.decode(want))


def test_cfg_one_calls_the_model_once_per_evaluation(pipe, monkeypatch):
    batches = []
    forward = pipe.transformer.forward

    def spy(x, *a, **k):
        batches.append(x.shape[0])
        return forward(x, *a, **k)

    monkeypatch.setattr(pipe.transformer, "forward", spy)
    pipe("a dog", steps=2, solver="euler", cfg=1.0, seed=0, progress=False)
    assert batches == [1, 1]
    batches.clear()
    pipe("a dog", steps=2, solver="euler", cfg=3.0, seed=0, progress=False)
    assert batches == [2, 2]
    batches.clear()
    pipe("a dog", steps=4, solver="euler", shift=1.0, cfg=3.0, cfg_truncation=0.5, seed=0, progress=False)
    assert batches == [2, 2, 1, 1]  # grid 0, .25 guided; .5, .75 conditional only


@pytest.mark.parametrize("method", ["none", "linear", "ntk", "time_aware", "smooth_time_aware", "frequency_aware"])
def test_extrapolation_options(pipe, method):
    """2x the training size runs with every RoPE scaling; the scaled ones change the result."""
    kw = dict(steps=2, solver="euler", seed=5, height=64, width=64, output_type="latent", progress=False)
    out = pipe("a tree", rope_scaling=method, **kw)
    assert out.shape == (1, 4, 32, 32) and torch.isfinite(out).all()
    if method != "none":
        assert (out - pipe("a tree", rope_scaling="none", **kw)).abs().max() > 1e-4


def test_official_weights_folder_with_explicit_parts(pipe_dir, tmp_path):
    """An official release folder holds only the transformer: text encoder and VAE come as paths."""
    model = _random_transformer()
    model.save_pretrained(tmp_path / "release", format="official", ema_state=model.state_dict())
    pipe = LuminaPipeline.from_pretrained(tmp_path / "release", text_encoder=pipe_dir / "text_encoder",
                                          vae=pipe_dir / "vae", device="cpu")
    assert len(pipe("x", steps=1, solver="euler", progress=False)) == 1


def test_diffusers_layout_root(pipe_dir, tmp_path):
    """A diffusers-style root: transformer/ in diffusers format, tokenizer/ beside text_encoder/."""
    root = tmp_path / "dif"
    _random_transformer().save_pretrained(root / "transformer", format="diffusers")
    enc = TextEncoder.from_pretrained(pipe_dir / "text_encoder")
    enc.model.save_pretrained(root / "text_encoder")
    enc.tokenizer.save_pretrained(root / "tokenizer")
    build_tiny_vae(root / "vae")
    pipe = LuminaPipeline.from_pretrained(root, device="cpu")
    assert pipe("a boat", steps=1, solver="euler", progress=False)[0].size == (32, 32)


def test_pipeline_save_and_pixel_codec(pipe, tmp_path):
    """save_pretrained round trip; a pixel-space model (no VAE) with its config in lumina_pipeline.json."""
    pipe.save_pretrained(tmp_path / "saved")
    again = LuminaPipeline.from_pretrained(tmp_path / "saved", device="cpu")
    kw = dict(steps=2, solver="euler", seed=1, output_type="latent", progress=False)
    torch.testing.assert_close(again("a hat", **kw), pipe("a hat", **kw))

    root = tmp_path / "pixel"
    _random_transformer(in_channels=3).save_pretrained(root / "transformer")
    build_tiny_gemma(root / "text_encoder")
    PipelineConfig(codec="pixel", max_length=64, defaults=GenerationDefaults(steps=3, solver="euler", cfg=2.0)).save(root)
    with pytest.warns(UserWarning, match="no EMA"):
        pix = LuminaPipeline.from_pretrained(root, device="cpu")
    assert pix.multiple == 2 and pix.default_size == 16 and pix.config.defaults.steps == 3
    assert pix("a red circle", seed=0, progress=False)[0].size == (16, 16)


def test_generate_caches_the_pipeline(pipe_dir):
    a = lumina.generate("a cup", model=pipe_dir, steps=1, seed=2, progress=False)
    first = lumina.load_pipeline(pipe_dir)
    b = lumina.generate("a cup", model=pipe_dir, steps=1, seed=2, progress=False)
    assert lumina.load_pipeline(pipe_dir) is first
    assert np.array_equal(_arr(a[0]), _arr(b[0]))


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(height=30), "`height` must be a positive multiple of 4"),
    (dict(width=0), "`width` must be a positive multiple of 4"),
    (dict(height=32.0), "`height`"),
    (dict(solver="heun"), "`solver` must be one of"),
    (dict(schedule="cosine"), "`schedule` must be one of"),
    (dict(rope_scaling="yarn"), "`rope_scaling` must be one of"),
    (dict(num_images_per_prompt=0), "`num_images_per_prompt`"),
    (dict(output_type="np"), "`output_type`"),
    (dict(cfg=-1.0), "`cfg`"), (dict(cfg_renorm=0.0), "`cfg_renorm`"),
    (dict(seed=1, generator=torch.Generator()), "`seed` or `generator`"),
])
def test_bad_generation_arguments(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe("a", steps=1, progress=False, **kwargs)


def test_bad_prompts(pipe):
    with pytest.raises(ValueError, match="`prompt`"):
        pipe([], steps=1)
    with pytest.raises(ValueError, match="`negative_prompt` must be one string or one per prompt"):
        pipe(["a", "b"], ["x", "y", "z"], steps=1)


def test_mismatched_text_feature_dim(pipe_dir, tmp_path):
    root = tmp_path / "bad"
    model = _random_transformer(context_dim=24)
    model.save_pretrained(root / "transformer", ema_state=model.state_dict())
    with pytest.raises(ValueError, match="text-feature dim mismatch.*32-d.*context_dim=24"):
        LuminaPipeline.from_pretrained(root, text_encoder=pipe_dir / "text_encoder", vae=pipe_dir / "vae")


def test_missing_parts(pipe_dir, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LuminaPipeline.from_pretrained(tmp_path / "nothing")
    root = tmp_path / "only_transformer"
    model = _random_transformer()
    model.save_pretrained(root / "transformer", ema_state=model.state_dict())
    with pytest.raises(FileNotFoundError, match="no text encoder.*text_encoder="):
        LuminaPipeline.from_pretrained(root)
    with pytest.raises(FileNotFoundError, match="no VAE.*vae="):
        LuminaPipeline.from_pretrained(root, text_encoder=pipe_dir / "text_encoder")
    from lumina.pipelines import loading as generate_module

    monkeypatch.setattr(generate_module, "default_model_path", lambda: None)
    with pytest.raises(ValueError, match="no model given"):
        lumina.generate("a")
    monkeypatch.undo()
    monkeypatch.setenv("LUMINA_MODEL", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
        lumina.generate("a")


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def test_cli_generate_writes_pngs(pipe_dir, tmp_path, capsys):
    out = tmp_path / "img.png"
    rc = cli_main(["generate", "a red circle", "a green square", "--model", str(pipe_dir), "--steps", "2",
                   "--solver", "euler", "--cfg", "2", "--seed", "4", "-n", "2", "--height", "24", "--width", "32",
                   "--schedule", "sigmoid", "--schedule-param", "mu=0.5", "--no-progress", "-o", str(out)])
    assert rc == 0
    paths = [tmp_path / f"img_{i}.png" for i in range(4)]
    assert capsys.readouterr().out.split() == [str(p) for p in paths]
    api = lumina.generate(["a red circle", "a green square"], model=pipe_dir, steps=2, solver="euler", cfg=2.0,
                          seed=4, num_images_per_prompt=2, height=24, width=32, progress=False,
                          schedule="sigmoid", schedule_params={"mu": 0.5})
    for p, img in zip(paths, api):  # the CLI is the API: the same pixels
        saved = Image.open(p)
        assert saved.format == "PNG" and saved.size == (32, 24)
        assert np.array_equal(_arr(saved.convert("RGB")), _arr(img))


def test_cli_errors(pipe_dir, tmp_path, capsys):
    assert cli_main(["generate", "a", "--model", str(pipe_dir), "--height", "30", "-o", str(tmp_path / "a.png")]) == 2
    assert "`--height` must be a positive multiple of 4" in capsys.readouterr().err  # the CLI's option names
    assert cli_main(["generate", "a", "--model", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["generate", "a", "--model", str(pipe_dir), "-o", str(tmp_path / "a.jpg")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    assert cli_main(["generate", "a", "--model", str(pipe_dir), "--schedule-param", "mu"]) == 2
    assert "KEY=NUMBER" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["generate", "a", "--solver", "heun"])


def test_sigmoid_schedule_params_reach_the_grid(pipe):
    kw = dict(steps=3, solver="euler", seed=0, schedule="sigmoid", output_type="latent", progress=False)
    a = pipe("a", **kw)
    b = pipe("a", schedule_params={"mu": 0.3}, **kw)
    assert (a - b).abs().max() > 1e-5


@pytest.mark.slow
def test_cli_entry_point(tmp_path):
    """The README's demo in fresh processes: `python -m lumina.pipelines.tiny DIR`, then
    `python -m lumina generate ... --model DIR` (the installed `lumina` script runs the same main)."""
    model, out = tmp_path / "tiny", tmp_path / "x.png"
    r = subprocess.run([sys.executable, "-m", "lumina.pipelines.tiny", str(model)], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "lumina", "generate", "a blue circle", "--model", str(model),
                        "--steps", "2", "--no-progress", "-o", str(out)], capture_output=True, text=True, timeout=300,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(out)]
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (32, 32) and _arr(img.convert("RGB")).std() > 1
