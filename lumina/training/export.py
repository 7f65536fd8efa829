"""The pipeline directory a training run ends with (:mod:`lumina.pipeline_dir`): the EMA (or last) transformer in the
native format, the text encoder reference, the codec, and for sequences and volumes the training size as the default."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .._paths import resolve_path
from ..conditioning.vocabulary import caption_vocabulary
from ..models.checkpoints import read_checkpoint, save_state
from ..pipeline_dir import GenerationDefaults, PipelineConfig
from . import lora as lora_io

__all__ = ["export_pipeline"]


def export_pipeline(trainer, path: Path) -> Path:
    """A pipeline directory (:mod:`lumina.pipeline_dir`) for `lumina generate --model`: the EMA transformer
    (native format; ``train.export_weights: last`` exports the last weights instead), a reference to the text
    encoder (pkg: paths stay references) and the codec; for a modality other than image, the training sample size
    as the default size; the words of the training captions when they are few (the pipeline warns about others).
    ``train.export_dtype`` bf16 stores the weights in half the bytes."""
    ckpt = trainer.latest_checkpoint()
    path.mkdir(parents=True, exist_ok=True)
    m = trainer.cfg.model
    vae = m.codec not in ("pixel", "identity")
    cfg = PipelineConfig(text_layer=m.text_layer, max_length=m.max_length, codec="vae" if vae else m.codec,
                         pixel_channels=trainer.codec.latent_channels, text_encoder=m.text_encoder,
                         vae=m.codec if vae else None)
    if trainer.text_encoder is not None:
        cfg.vocabulary = caption_vocabulary(map(trainer.dataset.caption, range(len(trainer.dataset))))
    if not trainer.images:
        cfg.defaults = GenerationDefaults(size=list(trainer.adapter_cls.size_of(trainer.sample_shape())))
    if trainer.cfg.lora is not None:
        lora_io.copy_adapter(ckpt, path / "lora")
        cfg.transformer = str(resolve_path(m.init_from)) if m.init_from else None
        cfg.lora = "lora"
    else:
        tdir = path / "transformer"
        shutil.rmtree(tdir, ignore_errors=True)
        last = trainer.cfg.train.export_weights == "last"
        config, state, _ = read_checkpoint(ckpt, ema=not last)
        if trainer.cfg.train.export_dtype == "bf16":
            state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
        if last:  # model.safetensors, marked as chosen (loads without the "no EMA weights" warning)
            save_state(config, state, tdir, format="native", last_only=True)
        else:  # the EMA weights alone
            save_state(config, None, tdir, format="native", ema_state=state)
    cfg.save(path)
    return path
