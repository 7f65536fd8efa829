"""Rectified-flow trainer for Next-DiT: alone or under torchrun (DDP or FSDP2), exact resume, EMA, LoRA.

    lumina train configs/tiny_shapes.yaml [section.key=value ...]
    torchrun --nproc_per_node 2 -m lumina.train configs/tiny_shapes.yaml train.parallel=ddp

Every modality: ``model.modality`` names the adapter (image, sequence, volume), which sets the sample layout; the
codec (``model.codec``: pixel, identity or a VAE directory) and the data (images, or tensors of any modality) follow.
One step: a batch of variable-size samples -> codec latents x1 and text features (frozen encoder; captions dropped
to "" with probability ``caption_dropout``) -> the flow-matching batch of :mod:`.flow` (t, x_t, velocity target,
an optional clean prefix with per-token t) -> the per-sample MSE -> AdamW step with gradient clipping -> EMA.

Checkpoints (:mod:`.checkpointing`) hold the model as a native NextDiT checkpoint (``config.json``,
``model.safetensors`` and the EMA weights ``model_ema.safetensors``, which ``NextDiT.from_pretrained`` reads; older
runs' official-format checkpoints resume too), or only the LoRA adapter, plus ``trainer_state.pt`` for an exact
resume: on CPU with a fixed seed, a resumed run reproduces the uninterrupted loss curve bit for bit. The trainer
never imports the pipelines: :meth:`Trainer.export_pipeline` writes the pipeline directory format of
:mod:`lumina.pipeline_dir`.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from .. import modalities
from .._paths import resolve_path
from ..codecs import VAECodec, load_codec
from ..conditioning import TextEncoder
from ..models.checkpoints import read_checkpoint, save_state
from ..models.nextdit import NextDiT, config_from_preset
from ..memory import MemoryEstimateError, check_fits, render_bytes, training_bytes
from . import checkpointing as ckpt_io
from . import features, flow
from . import lora as lora_io
from .checkpointing import LOG_FILE, read_log  # noqa: F401  (read_log: part of this module's API)
from .config import Config, ConfigError
from .data import epochs, is_tensor_jsonl, load_loader_state, loader_state
from .export import export_pipeline


# ------------------------------------------------------------------------------------------------
# distributed helpers
# ------------------------------------------------------------------------------------------------
def _dist_init() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _all_mean(x: float, world: int, device) -> float:
    if world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
def lr_factor(step: int, warmup: int, decay: int, steps: int) -> float:
    """The lr multiplier after ``step`` optimizer steps: linear warmup over ``warmup`` steps, constant, then linear
    down to 0 over the last ``decay`` of ``steps`` (warmup-stable-decay)."""
    f = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if decay and step > steps - decay:
        f = min(f, max(0.0, (steps - step) / decay))
    return f


class Trainer:
    """Builds everything from a :class:`Config` and runs :meth:`train`."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.rank, self.world, self.device = _dist_init()
        self.main = self.rank == 0
        t, m = cfg.train, cfg.model
        self.out = Path(t.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        if self.main:
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.yaml")

        # frozen text encoder; the data (its first sample sets a tensor codec's channels); the codec
        self.text_encoder = TextEncoder.from_pretrained(resolve_path(m.text_encoder), dtype=torch.float32,
                                                        device=self.device, layer=m.text_layer,
                                                        max_length=m.max_length)
        self.text_encoder.requires_grad_(False).eval()
        self.adapter_cls = modalities.get(m.modality)
        self.images = issubclass(self.adapter_cls, modalities.ImageAdapter)  # image data (folders, shapes) fits it
        source = self._data_source()
        self.dataset = None  # images: made once the model gives the patch multiple
        self._sample_shape: tuple[int, ...] | None = None
        if not self.images or is_tensor_jsonl(source):
            from .data import TensorCaptionDataset

            self.dataset = TensorCaptionDataset(source, self.adapter_cls.sample_rank)
        self.codec = self._make_codec()

        # the model: identical initial weights on every rank (seeded), fp32 master weights
        torch.manual_seed(t.seed)
        self.model = self._make_model()
        mc = self.model.config
        if mc.context_dim != self.text_encoder.dim:
            raise ConfigError(f"`model.text_encoder` gives {self.text_encoder.dim}-d features, the model expects "
                              f"context_dim={mc.context_dim}")
        if mc.in_channels != self.codec.latent_channels:
            raise ConfigError(f"`model.codec` has {self.codec.latent_channels} channels, the model expects "
                              f"in_channels={mc.in_channels}")
        if self.dataset is None:
            self.dataset = self._image_dataset(source, self.codec.downscale * mc.patch_size)
        self._check_memory()
        self.model.gradient_checkpointing = m.gradient_checkpointing
        self.model.to(self.device).train()
        if cfg.lora is not None:
            lora_io.add_lora(self.model, cfg.lora)
        self.n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.ddp_model = self._parallelize()
        # taken after sharding: under FSDP these are the local shards (DTensors)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        # EMA of the trainable weights (fp32), kept beside the model in its own layout (sharded under FSDP)
        self.ema = [p.detach().clone().float() for p in self.trainable]

        self.opt = torch.optim.AdamW(self.trainable, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, t.warmup_steps, t.decay_steps,
                                                                                     t.steps))

        from .data import make_loader

        self.loader = make_loader(self.dataset, t.batch_size, seed=t.seed, rank=self.rank, world_size=self.world,
                                  num_workers=cfg.data.num_workers)
        self.cache = None
        if cfg.data.cache_dir:  # text features; and VAE latents (their mode) when the codec is a VAE
            from .data import FeatureCache

            self.cache = FeatureCache(cfg.data.cache_dir, namespace=self._cache_namespace())
        # the training randomness (noise, t, caption dropout) has its own generator, saved with the checkpoint
        self.gen = torch.Generator().manual_seed(t.seed * 1000003 + self.rank)
        self.step = 0
        self.written: list[Path] = []  # the checkpoints this run wrote: the only ones keep_last may delete

    # -- setup helpers -------------------------------------------------------------------------
    def _image_dataset(self, source: Path, patch_multiple: int):
        """Images (a folder, a JSONL of images, or synthetic shapes) bucketed to multiples of `patch_multiple` (the
        codec's downscale x patch size)."""
        from .data import ImageCaptionDataset

        cfg = self.cfg
        dataset = ImageCaptionDataset(source, resolution=cfg.data.resolution, patch_multiple=patch_multiple,
                                      buckets=None if cfg.data.buckets == "aspect" else "square",
                                      random_crop=cfg.data.random_crop, seed=cfg.train.seed)
        if len(dataset) == 0:
            raise ConfigError(f"`data`: no training images found in {source}")
        return dataset

    def _check_memory(self) -> None:
        """MemoryEstimateError (a ConfigError) naming the sizes when a step's estimate exceeds 90% of free memory."""
        cfg, mc = self.cfg, self.model.config
        if self.images:
            extent = cfg.data.resolution // self.codec.downscale
            latent = (mc.in_channels, extent, extent)
            sample_numel, what = 3 * cfg.data.resolution ** 2, f"data.resolution={cfg.data.resolution}"
        else:
            latent = self.sample_shape()
            sample_numel, what = math.prod(latent), f"samples of shape {latent}"
        tokens = math.prod(self.model.adapter.token_grid(latent))  # tensor samples: the codec keeps their shape
        need = training_bytes(mc, cfg.train.batch_size, tokens, cfg.model.max_length, sample_numel,
                              cfg.train.precision, cfg.model.gradient_checkpointing)
        try:
            check_fits(need, self.device, f"a training step with train.batch_size={cfg.train.batch_size} and {what}")
        except MemoryEstimateError as e:
            raise ConfigError(str(e)) from None

    def sample_shape(self) -> tuple[int, ...]:
        """The shape of the first readable training sample, read once (tensor data's sizes and channels)."""
        if self._sample_shape is None:
            item = next((it for it in map(self.dataset.__getitem__, range(len(self.dataset))) if it is not None), None)
            if item is None:
                raise ConfigError(f"`data.source`: none of the {len(self.dataset)} samples could be read")
            self._sample_shape = tuple((item["sample"] if "sample" in item else item["image"]).shape)
        return self._sample_shape

    def _make_codec(self):
        m = self.cfg.model
        if m.codec in ("pixel", "identity"):
            channels = 3 if self.dataset is None else self.sample_shape()[self.adapter_cls.channel_dim]
            return load_codec(m.codec, channels, device=self.device)
        return VAECodec.from_pretrained(resolve_path(m.codec), device=self.device)

    def _make_model(self) -> NextDiT:
        m = self.cfg.model
        if m.init_from is not None:
            model = NextDiT.from_pretrained(resolve_path(m.init_from), dtype=torch.float32, device="cpu")
            if model.config.modality != m.modality:
                raise ConfigError(f"`model.modality` is {m.modality!r}, the model in `model.init_from` is "
                                  f"{model.config.modality!r}")
            return model
        overrides = dict(m.overrides, modality=m.modality)
        overrides.setdefault("context_dim", self.text_encoder.dim)
        overrides.setdefault("in_channels", self.codec.latent_channels)
        overrides.setdefault("sample_size", self._train_extent() // self.codec.downscale)
        try:
            return NextDiT(config_from_preset(m.preset, **overrides))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"`model.overrides`: {e}") from None

    def _train_extent(self) -> int:
        """The training extent of a scaled axis in sample units: data.resolution for images, else the first
        sample's (along the adapter's first scaled axis)."""
        if self.dataset is None:  # images
            return self.cfg.data.resolution
        size = self.adapter_cls.size_of(self.sample_shape())
        return next(v for v, on in zip(size, self.adapter_cls.scaled_axes) if on)

    def _data_source(self) -> Path:
        d = self.cfg.data
        if d.source is not None:
            return resolve_path(d.source)
        if not self.images:
            raise ConfigError(f"`data.shapes` renders images; a {self.cfg.model.modality!r} model needs `data.source` "
                              "(a JSONL of tensor samples)")
        from .shapes import DATA_VERSION, write_dataset

        try:  # the renderer draws each image 4x larger: refuse a size that cannot be drawn
            check_fits(render_bytes(d.resolution), "cpu", f"rendering data.shapes at data.resolution={d.resolution}")
        except MemoryEstimateError as e:
            raise ConfigError(str(e)) from None
        root = self.out / "data" / f"shapes_v{DATA_VERSION}_{d.shapes}_{d.resolution}_{self.cfg.train.seed}"
        jsonl = root / "captions.jsonl"
        if self.main and not jsonl.is_file():
            tmp = root.with_name(root.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            write_dataset(tmp, d.shapes, size=d.resolution, seed=self.cfg.train.seed)
            shutil.rmtree(root, ignore_errors=True)
            os.replace(tmp, root)
        if self.world > 1:
            dist.barrier()
        return jsonl

    def _cache_namespace(self) -> str:
        m = self.cfg.model
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", m.text_encoder).strip("_.")[-80:] or "encoder"
        return f"{name}-L{m.text_layer}-{m.max_length}"

    def _parallelize(self):
        p = self.cfg.train.parallel
        if p == "none" or self.world == 1:
            return self.model
        if p == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DDP(self.model, device_ids=ids)
        from torch.distributed.fsdp import fully_shard

        for block in self.model.layers:
            fully_shard(block)
        fully_shard(self.model)
        return self.model

    # -- one step ------------------------------------------------------------------------------
    def _loss(self, batch) -> torch.Tensor:
        t_cfg = self.cfg.train
        captions = [("" if float(torch.rand((), generator=self.gen)) < t_cfg.caption_dropout else c)
                    for c in batch["captions"]]
        feats, mask = features.encode_text(self.text_encoder, self.cache, captions, self.device)
        x1 = features.encode_samples(self.codec, self.cache, batch, self.dataset, self.cfg.model.codec, self.gen,
                                       self.device)
        t = flow.sample_t(len(x1), t_cfg.t_sampling, t_cfg.t_shift, self.gen)
        n_clean = t_cfg.clean_prefix
        fb = flow.noisy_batch(x1, t, self.gen, self.device,
                              prefix=self.model.adapter.prefix_index(n_clean) if n_clean else None)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if t_cfg.precision == "bf16"
                    else nullcontext())
        with autocast:
            v = self.ddp_model(fb.xt, t.to(self.device), feats, mask, clean_prefix=n_clean or None)
        return flow.flow_loss(v, fb)

    def ema_decay_at(self, n: int) -> float:
        """The EMA decay of update `n` (0-based): ``ema_decay``, ramped by (1 + n) / (10 + n) under ``ema_warmup``."""
        t = self.cfg.train
        return min(t.ema_decay, (1 + n) / (10 + n)) if t.ema_warmup else t.ema_decay

    @torch.no_grad()
    def _ema_update(self) -> None:
        d = self.ema_decay_at(self.step)  # self.step: the updates done before this one (restored on resume)
        for e, p in zip(self.ema, self.trainable):
            e.lerp_(p.detach().float(), 1 - d)

    # -- checkpoints ---------------------------------------------------------------------------
    @staticmethod
    def _full_cpu(x: torch.Tensor) -> torch.Tensor:
        """A full (unsharded) CPU copy: a DTensor shard is gathered (a collective under FSDP)."""
        if hasattr(x, "full_tensor"):
            x = x.full_tensor()
        return x.detach().cpu().clone()

    def _model_and_ema_state(self) -> tuple[dict, dict]:
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        full_model = {n: self._full_cpu(x) for n, x in self.model.state_dict().items()}
        ema = dict(full_model)
        for n, e in zip(names, self.ema):
            ema[n] = self._full_cpu(e).to(full_model[n].dtype)
        return full_model, ema

    def _optimizer_state(self) -> dict:
        if self.cfg.train.parallel == "fsdp" and self.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.model, self.opt,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.opt.state_dict()

    def save_checkpoint(self) -> Path | None:
        model_state, ema_state = self._model_and_ema_state()  # collectives: every rank takes part
        opt_state = self._optimizer_state()
        rng = ckpt_io.rng_state(self.gen)
        if self.world > 1:  # each rank's generator state travels to rank 0
            gathered = [None] * self.world
            dist.all_gather_object(gathered, {"gen": self.gen.get_state(), "torch": torch.get_rng_state()})
            rng["per_rank"] = gathered
        if not self.main:
            dist.barrier()
            return None

        def write_model(d: Path) -> None:
            if self.cfg.lora is not None:
                lora_io.save_adapter(model_state, ema_state, self.cfg.lora, d)
            else:
                save_state(self.model.config, model_state, d, format="native", ema_state=ema_state)

        state = {"step": self.step, "optimizer": opt_state, "scheduler": self.sched.state_dict(),
                 "data": loader_state(self.loader), "rng": rng, "world_size": self.world,
                 "config": self.cfg.to_dict()}
        final = ckpt_io.write_checkpoint(self.ckpt_root, self.step, write_model, state)
        self.written.append(final)
        ckpt_io.prune(self.ckpt_root, self.cfg.train.keep_last, self.written)  # only this run's own checkpoints
        if self.world > 1:
            dist.barrier()
        return final

    def latest_checkpoint(self) -> Path | None:
        return ckpt_io.latest_checkpoint(self.ckpt_root)

    def read_checkpoint_files(self, path: Path) -> tuple[dict, dict, dict]:
        """(trainer state, model state, EMA state) of a checkpoint, every file read before anything is applied:
        a corrupt file raises here and leaves the run untouched."""
        if not (path / ckpt_io.STATE_FILE).is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} has no {ckpt_io.STATE_FILE}")
        state = ckpt_io.read_state(path)
        if not isinstance(state, dict) or not {"step", "optimizer", "scheduler", "rng"} <= set(state):
            raise ValueError(f"{path / ckpt_io.STATE_FILE} is not a lumina trainer state")
        if state.get("world_size", 1) != self.world:
            raise ConfigError(f"checkpoint {path} was written with {state['world_size']} processes, this run has "
                              f"{self.world}: exact resume needs the same number")
        if self.cfg.lora is not None:
            model_state, ema_state = lora_io.load_adapter_states(path)
        else:
            model_state = read_checkpoint(path, ema=False)[1]  # native (or an earlier run's official) files
            ema_state = read_checkpoint(path, ema=True)[1]
        return state, model_state, ema_state

    def load_checkpoint(self, path: Path) -> None:
        self._apply_checkpoint(*self.read_checkpoint_files(path))

    def resume(self) -> Path | None:
        """Resume per ``train.resume``: a directory, or ``auto``: the checkpoint ``latest`` names, else (a missing,
        dangling or corrupt pointer, or files that do not read) the newest complete one, with a warning naming what
        was wrong. Returns the checkpoint resumed from (None: a fresh start)."""
        resume = self.cfg.train.resume
        if not resume:
            return None
        if resume != "auto":
            path = resolve_path(resume)
            self.load_checkpoint(path)
            return path
        candidates, problems = ckpt_io.resume_candidates(self.ckpt_root)
        for path in candidates:
            try:
                loaded = self.read_checkpoint_files(path)
            except ConfigError:
                raise
            except Exception as e:  # corrupt or truncated files: try the next older checkpoint
                problems.append(f"{path.name} could not be read ({type(e).__name__}: {e})")
                continue
            if problems and self.main:
                warnings.warn(f"resuming from {path}: {'; '.join(problems)}", RuntimeWarning, stacklevel=2)
            self._apply_checkpoint(*loaded)
            return path
        if candidates:
            raise ConfigError(f"no checkpoint in {self.ckpt_root} could be read: {'; '.join(problems)}. Set "
                              "`train.resume=null` to start afresh (earlier checkpoints are never deleted)")
        if problems and self.main:
            warnings.warn(f"starting from step 0: {'; '.join(problems)}", RuntimeWarning, stacklevel=2)
        return None

    def _apply_checkpoint(self, state: dict, model_state: dict, ema_state: dict) -> None:
        self._set_model_state(model_state, strict=self.cfg.lora is None)
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        with torch.no_grad():
            for n, e in zip(names, self.ema):
                full = ema_state[n].float()
                if hasattr(e, "device_mesh"):
                    from torch.distributed.tensor import distribute_tensor

                    full = distribute_tensor(full.to(e.device), e.device_mesh, e.placements)
                e.copy_(full)
        if self.cfg.train.parallel == "fsdp" and self.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.opt, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if "data" in state:
            load_loader_state(self.loader, state["data"])
        else:  # a checkpoint of the earlier lumina sampler: the same order, `position` samples of the epoch taken
            self.loader.sampler.set_epoch(state["sampler"]["epoch"])
            self.loader.sampler.load_state_dict({"yielded": state["sampler"]["position"]})
        ckpt_io.restore_rng(state["rng"], self.gen, self.rank)
        self.step = int(state["step"])

    def _set_model_state(self, state: dict, strict: bool) -> None:
        if self.cfg.train.parallel == "fsdp" and self.world > 1:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True, strict=strict))
        else:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected or (strict and missing):
                raise ConfigError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")

    # -- the loop ------------------------------------------------------------------------------
    def _batches(self):
        """The batches, epoch after epoch; a whole epoch of unreadable items (every batch None) raises."""
        empty, limit = 0, len(self.loader) + 1
        for batch in epochs(self.loader):
            if batch is not None:
                empty = 0
                yield batch
                continue
            empty += 1
            if empty >= limit:
                raise ConfigError(self._unreadable())

    def _unreadable(self) -> str:
        n = len(self.dataset)
        for i in range(min(n, 3)):  # this process's own reasons (workers keep theirs)
            self.dataset[i]
        why = "; ".join(f"{p}: {e}" for p, e in list(self.dataset.errors.items())[:3])
        return (f"`data`: none of the {n} items could be read (tried every item of a whole epoch); "
                f"for example {why or 'see the warnings above'}")

    def train(self) -> dict:
        t = self.cfg.train
        self.resume()
        log_path = self.out / LOG_FILE
        if self.main:
            ckpt_io.start_log(log_path)
        bar = None
        if self.main and t.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.steps, initial=self.step, desc="train", dynamic_ncols=True)
        batches = self._batches()
        losses, t0, last = [], time.perf_counter(), None
        while self.step < t.steps:
            batch = next(batches)
            loss = self._loss(batch)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, t.grad_clip)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self._ema_update()
            self.step += 1
            value = _all_mean(loss.item(), self.world, self.device)
            losses.append(value)
            last = value
            if self.main:
                ckpt_io.append_log(log_path, self.step, value, self.sched.get_last_lr()[0], float(grad_norm),
                            time.perf_counter() - t0)
                if bar is not None:
                    bar.update(1)
                    if self.step % t.log_every == 0:
                        bar.set_postfix(loss=f"{sum(losses[-t.log_every:]) / len(losses[-t.log_every:]):.4f}")
            if self.step % t.save_every == 0 or self.step == t.steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if self.main:
            self.export_pipeline(self.out / "pipeline")
        if self.world > 1:
            dist.barrier()
        return {"step": self.step, "last_loss": last, "trainable_params": self.n_trainable}

    def export_pipeline(self, path: Path) -> Path:
        """A pipeline directory for `lumina generate --model` (see :func:`.export.export_pipeline`)."""
        return export_pipeline(self, path)


def train(cfg: Config) -> dict:
    """Train per `cfg` (see :class:`Trainer`); returns {step, last_loss, trainable_params}."""
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
