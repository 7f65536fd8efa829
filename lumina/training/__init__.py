"""Training: data, trainer, checkpoints, LoRA.

* :mod:`.config`: the YAML config (``model``, ``data``, ``train``, ``lora``), every key checked (pydantic).
* :mod:`.trainer`: :class:`~.trainer.Trainer` / :func:`~.trainer.train` (rectified flow, DDP / FSDP2 under torchrun,
  EMA, atomic checkpoints, exact resume).
* :mod:`.data`: image-caption folders and JSONL, aspect-ratio buckets, feature cache, resumable loader (torchdata).
* :mod:`.lora`: LoRA adapters through peft. :mod:`.shapes`: the synthetic data of the bundled model and its judge.
"""
