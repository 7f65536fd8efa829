"""Model layer: Next-DiT and its rotary position tables."""
