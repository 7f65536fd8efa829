"""Training: data, trainer, checkpoints, LoRA."""
