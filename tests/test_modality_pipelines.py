"""One flow pipeline and one trainer for every modality: tiny random image, sequence and volume models train a few
steps, save, export a pipeline directory and sample through `lumina.generate` into their result types; the flow
pieces (t sampling, clean prefix, masked loss) and the result files on their own; the trainer never imports the
pipelines."""
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lumina
from lumina.codecs import IdentityCodec
from lumina.models.nextdit import NextDiT, config_from_preset
from lumina.pipelines import (FlowPipeline, ImageResult, LuminaPipeline, SequencePipeline, SequenceResult,
                              VolumePipeline, VolumeResult, pipeline_class)
from lumina.pipelines.tiny import build_tiny_gemma
from lumina.sampling.schedules import shift_time
from lumina.training import config as C
from lumina.training import flow
from lumina.training.data import write_tensor_dataset
from lumina.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
TINY = {"dim": 32, "n_layers": 2, "n_heads": 2, "patch_size": 2, "learn_sigma": False}


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Path:
    return build_tiny_gemma(tmp_path_factory.mktemp("te") / "gemma")


def _data(root: Path, modality: str) -> dict:
    """Data of the modality: synthetic shapes for images; random tensors written as a JSONL for the others."""
    if modality == "image":
        return {"shapes": 8, "resolution": 8, "buckets": "square"}
    g = torch.Generator().manual_seed(0)
    shape = {"sequence": (2, 12), "volume": (2, 3, 8, 8)}[modality]
    samples = [torch.rand(shape, generator=g) * 2 - 1 for _ in range(6)]
    return {"source": str(write_tensor_dataset(root / "data", samples, [f"sample {i}" for i in range(6)]))}


@pytest.mark.parametrize("modality,codec,suffix,result_type", [
    ("image", "pixel", ".png", ImageResult),
    ("sequence", "identity", ".wav", SequenceResult),
    ("volume", "pixel", ".gif", VolumeResult),
])
def test_each_adapter_trains_saves_and_samples(tmp_path, gemma, modality, codec, suffix, result_type):
    cfg = C.from_dict({
        "model": {"preset": "NextDiT_tiny", "modality": modality,
                  "overrides": dict(TINY, **({"rope_axis_dims": [4, 6, 6]} if modality == "volume" else {})), "text_encoder": str(gemma),
                  "text_layer": -2, "max_length": 16, "codec": codec},
        "data": _data(tmp_path, modality),
        "train": {"out_dir": str(tmp_path / "run"), "steps": 3, "batch_size": 2, "lr": 1e-3, "save_every": 3,
                  "progress": False, "clean_prefix": 1 if modality == "volume" else 0},
    })
    trainer = Trainer(cfg)
    out = trainer.train()
    assert out["step"] == 3 and np.isfinite(out["last_loss"])
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000003"
    assert (ckpt / "config.json").is_file() and (ckpt / "model_ema.safetensors").is_file()  # native format
    assert NextDiT.from_pretrained(ckpt).config.modality == modality

    pipe_dir = tmp_path / "run" / "pipeline"
    pipe = lumina.load_pipeline(pipe_dir, cache=False)
    assert type(pipe) is pipeline_class(modality) and pipe.result_type is result_type
    result = lumina.generate("sample 1", model=pipe_dir, steps=2, seed=3, progress=False)
    assert isinstance(result, result_type) and len(result) == 1
    again = lumina.generate("sample 1", model=pipe_dir, steps=2, seed=3, progress=False)
    first = result[0] if modality != "image" else torch.tensor(np.asarray(result[0]), dtype=torch.float32)
    second = again[0] if modality != "image" else torch.tensor(np.asarray(again[0]), dtype=torch.float32)
    assert torch.equal(first, second)  # seeded
    (path,) = result.save(tmp_path / f"out{suffix}")
    assert path.is_file() and path.stat().st_size > 0
    if modality == "sequence":
        assert result.samples.shape == (1, 2, 12)  # the training size is the pipeline's default size
        with wave.open(str(path)) as w:
            assert w.getnchannels() == 2 and w.getnframes() == 12
    elif modality == "volume":
        assert result.samples.shape == (1, 2, 3, 8, 8)
        with Image.open(path) as gif:
            assert gif.n_frames == 2
    else:
        assert Image.open(path).size == (8, 8)


def test_trainer_imports_no_pipeline_module():
    code = ("import sys, lumina.training.trainer, lumina.training.flow, lumina.training.checkpointing; "
            "print(sorted(m for m in sys.modules if m.startswith('lumina.pipelines')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_sample_t_uses_the_sampler_shift():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    t = flow.sample_t(64, "shifted", 3.0, g1)
    assert torch.equal(t, shift_time(torch.rand(64, generator=g2), 3.0))
    assert float(t.mean()) < 0.5  # shift > 1 moves times towards noise
    with pytest.raises(ValueError, match="`t_sampling`"):
        flow.sample_t(2, "cosine", 1.0, g1)


def test_clean_prefix_is_data_and_out_of_the_loss():
    model = NextDiT(config_from_preset("NextDiT_tiny", modality="volume", in_channels=3, context_dim=None,
                                       rope_axis_dims=(4, 6, 6), **TINY))
    x1 = [torch.randn(3, 3, 4, 4), torch.randn(2, 3, 4, 4)]
    t = torch.tensor([0.2, 0.7])
    fb = flow.noisy_batch(x1, t, torch.Generator().manual_seed(0), "cpu", prefix=model.adapter.prefix_index(1))
    for x, xt, w in zip(x1, fb.xt, fb.weights):
        assert torch.equal(xt[:1], x[:1]) and not torch.equal(xt[1:], x[1:])
        assert w[:1].sum() == 0 and bool((w[1:] == 1).all())
    # an error on the clean frames costs nothing; on the others it does
    v = [tg.clone() for tg in fb.target]
    v[0][0] += 5.0
    assert float(flow.flow_loss(v, fb)) == 0.0
    v[0][1] += 1.0
    assert float(flow.flow_loss(v, fb)) > 0.0
    plain = flow.noisy_batch(x1, t, torch.Generator().manual_seed(0), "cpu")
    assert all(w is None for w in plain.weights)
    assert torch.equal(flow.flow_loss(plain.target, plain), torch.tensor(0.0))


def test_unconditional_pipeline():
    cfg = config_from_preset("NextDiT_tiny", modality="sequence", in_channels=2, context_dim=None, sample_size=8,
                             **TINY)
    torch.manual_seed(0)
    pipe = SequencePipeline(NextDiT(cfg), None, IdentityCodec(2))
    out = pipe(None, size=(8,), steps=2, seed=1, progress=False, num_samples_per_prompt=3)
    assert isinstance(out, SequenceResult) and out.samples.shape == (3, 2, 8)
    assert torch.isfinite(out.samples).all()
    assert pipe(size=16, steps=1, seed=1, progress=False).samples.shape == (1, 2, 16)  # default prompt None
    with pytest.raises(ValueError, match="`cfg`"):
        pipe(None, size=(8,), steps=1, cfg=3.0, progress=False)
    with pytest.raises(ValueError, match="unconditional"):
        pipe("a prompt", size=(8,), steps=1, progress=False)
    with pytest.raises(ValueError, match="`length` must be a positive multiple of 2"):
        pipe(None, size=(7,), steps=1, progress=False)
    with pytest.raises(ValueError, match="`size`"):
        pipe(None, size="8", steps=1, progress=False)


def test_pipeline_checks_its_modality_and_parts():
    img = NextDiT(config_from_preset("NextDiT_tiny", in_channels=2, context_dim=None, **TINY))
    with pytest.raises(ValueError, match="runs 'volume' models"):
        VolumePipeline(img, None, IdentityCodec(2))
    with pytest.raises(ValueError, match="latent channel mismatch"):
        LuminaPipeline(img, None, IdentityCodec(3))
    assert pipeline_class("image") is LuminaPipeline
    with pytest.raises(ValueError, match="no pipeline for the modality 'smell'"):
        pipeline_class("smell")
    vol = NextDiT(config_from_preset("NextDiT_tiny", modality="volume", in_channels=2, context_dim=None,
                                     rope_axis_dims=(4, 6, 6), **TINY))
    pipe = VolumePipeline(vol, None, IdentityCodec(2))
    with pytest.raises(ValueError, match="`size` is required"):  # frames have no training default
        pipe(None, steps=1, progress=False)
    with pytest.raises(ValueError, match="`cfg_channels`"):
        pipe(None, size=(2, 4, 4), steps=1, cfg_channels=1, progress=False)
    # base-class loading picks the modality's pipeline
    assert FlowPipeline.modality is None


def test_result_files(tmp_path):
    seq = SequenceResult(torch.stack([torch.linspace(-2, 2, 10).expand(2, 10)] * 2))
    paths = seq.save(tmp_path / "a.wav")
    assert [p.name for p in paths] == ["a_0.wav", "a_1.wav"]
    with wave.open(str(paths[0])) as w:
        pcm = np.frombuffer(w.readframes(10), dtype=np.int16).reshape(10, 2)
    assert pcm[0, 0] == -32767 and pcm[-1, 1] == 32767  # clipped to [-1, 1]
    (npy,) = SequenceResult(seq.samples[:1]).save(tmp_path / "b.npy")
    assert np.array_equal(np.load(npy), seq.samples[0].numpy())
    vol = VolumeResult(torch.rand(1, 3, 3, 4, 5))
    (gif,) = vol.save(tmp_path / "v.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 3 and im.size == (5, 4)
    (strip,) = vol.save(tmp_path / "v.png")
    assert Image.open(strip).size == (15, 4)
    with pytest.raises(ValueError, match=r"must end in \.wav or \.npy"):
        seq.save(tmp_path / "a.mp3")
    with pytest.raises(ValueError, match="rank-5"):
        VolumeResult(torch.rand(3, 4, 5))
    json.dumps([str(p) for p in paths])
