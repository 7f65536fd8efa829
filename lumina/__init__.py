"""lumina: Lumina-Next (Next-DiT)."""
