"""`python -m lumina.train CONFIG.yaml [section.key=value ...]`: the trainer, e.g. under
`torchrun --nproc_per_node 2 -m lumina.train CONFIG.yaml train.parallel=fsdp`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
