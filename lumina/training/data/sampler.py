"""A shuffling, rank-sharded loader (torchdata's StatefulDataLoader) that resumes mid-epoch at exactly the next
batch, workers included."""
from __future__ import annotations

import warnings
from collections.abc import Iterator

from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from .dataset import collate

__all__ = ["make_loader", "epochs", "loader_state", "load_loader_state"]


# Resumable loading is torchdata's StatefulDataLoader over its StatefulDistributedSampler (DistributedSampler's
# order: randperm seeded with seed + epoch, padded by wrapping to a multiple of world_size, every world_size-th index
# from rank). Its state_dict() is taken when a batch is handed out, not when workers prefetched it, so after
# load_state_dict() the next iter() yields exactly the batches an uninterrupted loader would, workers included
# (tests/test_data.py checks 0 and 2 workers, mid-epoch and across an epoch end). It does not save the epoch, which
# the sampler needs to draw the order: loader_state() / load_loader_state() add it. Caveat: torchdata 0.11.0 (the
# newest release) calls torch.set_vital, deprecated in torch 2.14 and removed from torch's main branch in March 2026
# (pytorch/pytorch#178479, tracked as meta-pytorch/data#1536): a torch without it needs a newer torchdata.


def make_loader(dataset, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, shuffle: bool = True, drop_last: bool = False,
                collate_fn=collate) -> StatefulDataLoader:
    """A resumable loader of this rank's shard; ``epochs(loader)`` runs it forever, epoch after epoch."""
    sampler = StatefulDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                         drop_last=drop_last)
    with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated since (see above)
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                                  num_workers=num_workers, drop_last=False)


def epochs(loader: StatefulDataLoader) -> Iterator:
    """The loader's batches, epoch after epoch (a restored loader first finishes its saved epoch). A loader that
    yields nothing for two epochs running (an empty shard) raises instead of spinning."""
    idle = 0
    while True:
        got = False
        for batch in loader:
            got = True
            yield batch
        idle = 0 if got else idle + 1
        if idle >= 2:  # one empty pass is a restored loader at its epoch's end
            raise ValueError(f"the data loader yields no batch: {len(loader.dataset)} items, rank "
                             f"{loader.sampler.rank} of {loader.sampler.num_replicas}")
        loader.sampler.set_epoch(loader.sampler.epoch + 1)


def loader_state(loader: StatefulDataLoader) -> dict:
    """``{"epoch", "loader"}``: where the next batch comes from, for a checkpoint (``torch.load(weights_only)``)."""
    return {"epoch": loader.sampler.epoch, "loader": loader.state_dict()}


def load_loader_state(loader: StatefulDataLoader, state: dict) -> None:
    """Restore :func:`loader_state`; the next ``iter(loader)`` continues that epoch at the next batch."""
    loader.sampler.set_epoch(int(state["epoch"]))
    loader.load_state_dict(state["loader"])
