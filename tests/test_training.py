"""The trainer: config checks, loss goes down, torchrun DDP / FSDP on 2 CPU processes, kill -9 and exact resume,
LoRA trains only adapters and merges on load, the exported pipeline generates."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import lumina
from lumina.pipelines.tiny import build_tiny_gemma, randomize_weights
from lumina.training import config as C
from lumina.training.trainer import Trainer, read_log

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Path:
    return build_tiny_gemma(tmp_path_factory.mktemp("te") / "gemma")


def _cfg(tmp: Path, gemma: Path, **sections) -> dict:
    d = {
        "model": {"preset": "NextDiT_tiny", "overrides": {"patch_size": 2, "learn_sigma": False},
                  "text_encoder": str(gemma), "text_layer": -2, "max_length": 32, "codec": "pixel"},
        "data": {"shapes": 48, "resolution": 16, "buckets": "square"},
        "train": {"out_dir": str(tmp / "run"), "steps": 6, "batch_size": 8, "lr": 1e-3, "ema_decay": 0.9,
                  "save_every": 2, "progress": False, "seed": 0, "t_sampling": "lognorm"},
    }
    for name, values in sections.items():
        d.setdefault(name, {}).update(values)
    return d


def _write(tmp: Path, d: dict) -> Path:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _run(args: list[str], timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, **kw)


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch,match", [
    ({"train": {"stpes": 3}}, r"`train\.stpes`"),
    ({"optim": {}}, r"unknown section"),
    ({"train": {"lr": -1.0}}, r"`train\.lr` must be > 0"),
    ({"train": {"steps": 0}}, r"`train\.steps` must be >= 1"),
    ({"train": {"batch_size": "8"}}, r"`train\.batch_size` must be an integer"),
    ({"train": {"ema_decay": 1.0}}, r"`train\.ema_decay`"),
    ({"train": {"t_sampling": "cosine"}}, r"`train\.t_sampling`"),
    ({"train": {"parallel": "zero3"}}, r"`train\.parallel`"),
    ({"train": {"caption_dropout": 1.5}}, r"`train\.caption_dropout`"),
    ({"model": {"preset": "NextDiT_huge"}}, r"`model\.preset`"),
    ({"model": {"overrides": {"depth": 3}}}, r"model\.overrides"),
    ({"data": {"buckets": "round"}}, r"`data\.buckets`"),
    ({"data": {"source": "x.jsonl"}}, r"exactly one of `data\.source`"),
    ({"lora": {"rank": 0}}, r"`lora\.rank`"),
    ({"lora": {"alpha": 4, "bias": True}}, r"`lora\.bias`"),
])
def test_bad_config_names_the_key(tmp_path, gemma, patch, match):
    d = _cfg(tmp_path, gemma)
    for section, values in patch.items():
        d.setdefault(section, {}).update(values)
    with pytest.raises(C.ConfigError, match=match):
        C.from_dict(d)


def test_config_file_overrides(tmp_path, gemma):
    path = _write(tmp_path, _cfg(tmp_path, gemma))
    cfg = C.load(path, ["train.steps=9", "model.overrides={dim: 32, n_heads: 2}"])
    assert cfg.train.steps == 9 and cfg.model.overrides == {"dim": 32, "n_heads": 2}
    with pytest.raises(C.ConfigError, match="section.key=value"):
        C.load(path, ["steps=9"])
    with pytest.raises(FileNotFoundError):
        C.load(tmp_path / "none.yaml")
    assert C.load(REPO / "configs" / "tiny_shapes.yaml").model.codec == "pixel"  # the shipped config is valid


def test_model_modality_is_checked_and_reaches_the_model(tmp_path, gemma, monkeypatch):
    from lumina.models import modality as registry

    assert C.from_dict(_cfg(tmp_path, gemma)).model.modality == "image"
    with pytest.raises(C.ConfigError, match=r"`model\.modality` must be one of \[.*'image'.*got 'smell'"):
        C.from_dict(_cfg(tmp_path, gemma, model={"modality": "smell"}))
    with pytest.raises(C.ConfigError, match=r"`model\.modality`, not `model\.overrides\.modality`"):
        C.from_dict(_cfg(tmp_path, gemma, model={"overrides": {"modality": "image"}}))
    # the registry is read when the config is checked: a modality registered later is accepted, and passed through
    monkeypatch.setitem(registry._REGISTRY, "image_copy", registry.get("image"))
    tr = Trainer(C.from_dict(_cfg(tmp_path, gemma, model={"modality": "image_copy"})))
    assert tr.model.config.modality == "image_copy"


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def test_steps_reduce_the_loss_on_a_fixed_batch(tmp_path, gemma):
    cfg = C.from_dict(_cfg(tmp_path, gemma, train={"caption_dropout": 0.0, "lr": 3e-3}))
    tr = Trainer(cfg)
    batch = next(tr._batches())

    def fixed_loss():
        state = tr.gen.get_state()
        tr.gen.manual_seed(123)
        with torch.no_grad():
            loss = tr._loss(batch).item()
        tr.gen.set_state(state)
        return loss

    before = fixed_loss()
    for _ in range(25):
        tr._loss(batch).backward()
        torch.nn.utils.clip_grad_norm_(tr.trainable, 2.0)
        tr.opt.step()
        tr.opt.zero_grad()
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)


def test_train_writes_log_checkpoints_and_a_pipeline(tmp_path, gemma):
    cfg = C.from_dict(_cfg(tmp_path, gemma, train={"keep_last": 2, "warmup_steps": 2, "decay_steps": 3,
                                                     "export_dtype": "bf16"}))
    result = lumina.training.trainer.train(cfg)
    run = Path(cfg.train.out_dir)
    assert result["step"] == 6
    rows = read_log(run / "loss.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(r["loss"] > 0 for r in rows)
    # warmup-stable-decay: warmup 2, constant, then down to 0 over the last 3 steps (the log holds the lr after each step)
    assert [round(r["lr"] / 1e-3, 6) for r in rows] == [1.0, 1.0, 1.0, 0.666667, 0.333333, 0.0]
    # the exported pipeline: the EMA weights alone, in bf16, and the words of its training captions
    exported = run / "pipeline" / "transformer"
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model_ema.safetensors"]
    assert {v.dtype for v in lumina.models.checkpoints.read_safetensors(exported / "model_ema.safetensors").values()} \
        == {torch.bfloat16}
    vocabulary = json.loads((run / "pipeline" / "lumina_pipeline.json").read_text())["vocabulary"]
    assert {"circle", "square", "triangle"} <= set(vocabulary) and len(vocabulary) < 60
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step_0000004", "step_0000006"]  # keep_last
    assert (run / "checkpoints" / "latest").read_text() == "step_0000006"
    # the checkpoint is an official directory: EMA weights by default, raw ones with ema=False
    ema = lumina.NextDiT.from_pretrained(run / "checkpoints" / "step_0000006")
    raw = lumina.NextDiT.from_pretrained(run / "checkpoints" / "step_0000006", ema=False)
    assert not torch.equal(ema.x_embedder.weight, raw.x_embedder.weight)
    # the exported pipeline generates
    images = lumina.generate("a red circle", model=run / "pipeline", steps=2, seed=0, progress=False)
    assert images[0].size == (16, 16)
    # export_weights last: the raw weights as model.safetensors, marked so that loading them does not warn
    tr = Trainer(cfg.model_copy(update={"train": cfg.train.model_copy(update={"export_weights": "last"})}))
    last = tr.export_pipeline(run / "pipeline_last") / "transformer"
    assert sorted(p.name for p in last.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((last / "config.json").read_text())["weights"] == "last"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = lumina.NextDiT.from_pretrained(last)
    assert torch.equal(loaded.x_embedder.weight, raw.x_embedder.weight.bfloat16())


def test_ema_warmup_forgets_the_init(tmp_path, gemma):
    """Update n uses decay min(ema_decay, (1+n)/(10+n)): the first update keeps 10% of the init, not 90%."""
    for warmup, kept in ((True, 0.1), (False, 0.9)):
        tr = Trainer(C.from_dict(_cfg(tmp_path, gemma, train={"ema_warmup": warmup})))
        assert [round(tr.ema_decay_at(n), 6) for n in (0, 10, 1000)] == \
            ([0.1, 0.55, 0.9] if warmup else [0.9, 0.9, 0.9])
        init = [e.clone() for e in tr.ema]
        with torch.no_grad():
            for p in tr.trainable:
                p.add_(1.0)
        tr._ema_update()
        for e, e0, p in zip(tr.ema, init, tr.trainable):
            torch.testing.assert_close(e, kept * e0 + (1 - kept) * p.float())


@pytest.mark.slow
def test_resume_after_kill_9_continues_the_same_loss_curve(tmp_path, gemma):
    """Bitwise on CPU: kill -9 a run after its step-4 checkpoint, resume, compare with an uninterrupted run."""
    steps = 8
    full = _cfg(tmp_path / "a", gemma, train={"steps": steps, "out_dir": str(tmp_path / "a" / "run")})
    (tmp_path / "a").mkdir()
    r = _run([sys.executable, "-m", "lumina", "train", str(_write(tmp_path / "a", full))])
    assert r.returncode == 0, r.stderr
    want = read_log(tmp_path / "a" / "run" / "loss.csv")

    (tmp_path / "b").mkdir()
    out = tmp_path / "b" / "run"
    cfg_b = _write(tmp_path / "b", _cfg(tmp_path / "b", gemma, train={"steps": steps, "out_dir": str(out),
                                                                        "save_every": 2}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lumina", "train", str(cfg_b)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text() >= "step_0000004":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text()
    assert killed_at < f"step_{steps:07d}"
    r = _run([sys.executable, "-m", "lumina", "train", str(cfg_b)])  # resume: auto
    assert r.returncode == 0, r.stderr
    got = read_log(out / "loss.csv")
    assert [x["step"] for x in got] == list(range(1, steps + 1))
    assert [x["loss"] for x in got] == [x["loss"] for x in want]  # bit for bit
    assert [x["grad_norm"] for x in got] == [x["grad_norm"] for x in want]
    a = lumina.NextDiT.from_pretrained(tmp_path / "a" / "run" / "checkpoints" / f"step_{steps:07d}")
    b = lumina.NextDiT.from_pretrained(out / "checkpoints" / f"step_{steps:07d}")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_cpu_processes(tmp_path, gemma, parallel):
    d = _cfg(tmp_path, gemma, train={"steps": 3, "save_every": 3, "parallel": parallel, "batch_size": 4})
    r = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(29500 + os.getpid() % 1000 + (parallel == "fsdp")), "-m", "lumina.train",
              str(_write(tmp_path, d))])
    assert r.returncode == 0, r.stderr[-4000:]
    run = Path(d["train"]["out_dir"])
    rows = read_log(run / "loss.csv")
    assert [x["step"] for x in rows] == [1, 2, 3] and all(x["loss"] > 0 for x in rows)
    state = torch.load(run / "checkpoints" / "step_0000003" / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]["per_rank"]) == 2
    model = lumina.NextDiT.from_pretrained(run / "checkpoints" / "step_0000003")  # gathered full weights
    assert model.layers[0].attention.wq.weight.shape == (64, 64)


def test_lora_trains_only_adapters_and_merges_on_load(tmp_path, gemma):
    pytest.importorskip("peft")
    from lumina.pipelines import PipelineConfig

    # a base with random weights everywhere (zero-initialised gates would let no gradient reach the adapters)
    base = lumina.NextDiT(lumina.config_from_preset("NextDiT_tiny", patch_size=2, learn_sigma=False, in_channels=3,
                                                    sample_size=16)).eval()
    randomize_weights(base, std=0.2)
    base_pipe = tmp_path / "base"
    base.save_pretrained(base_pipe / "transformer", ema_state=base.state_dict())
    PipelineConfig(codec="pixel", text_encoder=str(gemma), text_layer=-2, max_length=32).save(base_pipe)
    base_dir = base_pipe / "transformer"
    d = _cfg(tmp_path, gemma, train={"steps": 4, "save_every": 4, "lr": 1e-2, "ema_decay": 0.0})
    d["model"].update(preset=None, init_from=str(base_dir))
    d["lora"] = {"rank": 4, "alpha": 8.0, "target_modules": ["wq", "wv", "w2"]}
    tr = Trainer(C.from_dict(d))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    trainable = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"wq", "wv", "w2"}
    tr.train()
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)  # the base weights never moved
    adapter = tmp_path / "run" / "checkpoints" / "step_0000004"
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert not (adapter / "consolidated.00-of-01.safetensors").exists()  # the adapter alone

    pipe_dir = tmp_path / "run" / "pipeline"  # base transformer + merged adapter
    kw = dict(steps=2, seed=1, output_type="latent", progress=False)
    with_lora = lumina.generate("a red circle", model=pipe_dir, **kw)
    plain = lumina.generate("a red circle", model=base_pipe, **kw)
    again = lumina.generate("a red circle", model=base_pipe, lora=pipe_dir / "lora", **kw)
    assert (with_lora - plain).abs().max() > 1e-3
    torch.testing.assert_close(again, with_lora)
    # the merged weights equal the peft model's effective weights
    merged = lumina.load_pipeline(base_pipe, lora=pipe_dir / "lora").transformer
    x = torch.randn(1, 3, 16, 16)
    feats, mask = torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.bool)
    tr.model.eval()
    with torch.no_grad():
        ema_lora = tr.model(x, torch.tensor([0.3]), feats, mask)  # ema_decay 0: EMA == raw weights
        torch.testing.assert_close(merged(x, torch.tensor([0.3]), feats, mask), ema_lora, rtol=1e-4, atol=1e-4)


def test_vae_codec_latent_cache_bf16_and_checkpointing(tmp_path, gemma):
    """A latent-space model (tiny AutoencoderKL) with cached text features and VAE latents, bf16 autocast and
    gradient checkpointing: trains, and a second run reads every feature from the cache."""
    from lumina.pipelines.tiny import build_tiny_vae

    vae = build_tiny_vae(tmp_path / "vae")
    cache = tmp_path / "cache"

    def run(name):
        d = _cfg(tmp_path / name, gemma, train={"steps": 2, "save_every": 2, "precision": "bf16",
                                                "caption_dropout": 0.0},
                 data={"cache_dir": str(cache), "shapes": 16})
        d["model"].update(codec=str(vae), gradient_checkpointing=True)
        d["model"]["overrides"] = {"patch_size": 2, "learn_sigma": True}
        tr = Trainer(C.from_dict(d))
        assert tr.model.config.in_channels == 4 and tr.model.gradient_checkpointing
        result = tr.train()
        assert result["step"] == 2 and torch.isfinite(torch.tensor(result["last_loss"]))
        return tr.cache

    first = run("a")
    assert first.misses > 0 and any(cache.rglob("*.safetensors"))
    second = run("b")
    assert second.misses == 0 and second.hits > 0
