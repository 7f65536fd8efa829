"""lumina_kernels: the compiled op library of lumina (see README)."""
