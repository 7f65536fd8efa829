"""Training data: datasets (images with aspect-ratio buckets, tensors of any modality), collate, feature cache,
resumable loader. One module each: :mod:`.buckets`, :mod:`.dataset`, :mod:`.tensors`, :mod:`.cache`, :mod:`.sampler`.

Public API
----------
- :func:`make_buckets` / :func:`closest_bucket` -- the official Lumina-Next aspect-ratio crop sizes within a patch
  budget, and the bucket an image of a given size goes to.
- :class:`ImageCaptionDataset` -- a folder of images with sibling ``.txt`` captions, or a JSONL file of
  ``{"path", "caption", ...}`` records; items are bucket-cropped float32 ``(3, h, w)`` tensors in ``[0, 1]``.
- :class:`TensorCaptionDataset` -- a JSONL of ``{"path": .npy or .safetensors, "caption"}``: samples of any
  modality (sequences, volumes, precomputed latents); :func:`write_tensor_dataset`.
- :func:`collate` -- list of items -> batch dict (sizes may differ; bad items dropped).
- :class:`FeatureCache`, :func:`content_key`, :func:`text_key` -- an on-disk, content-addressed cache of per-sample
  tensors (VAE latents, text features) in safetensors files, written atomically.
- :func:`make_loader`, :func:`epochs`, :func:`loader_state`, :func:`load_loader_state` -- a shuffling, rank-sharded
  loader (torchdata's StatefulDataLoader) that resumes mid-epoch at exactly the next batch, workers included.

Bucket rule (as the official trainer, ``lumina_next_t2i/imgproc.py``): with ``N`` = the patch budget, walk the
staircase ``wp = N, N-1, ..., 1`` raising ``hp`` while ``hp * wp <= N`` and keep every visited ``(hp, wp)`` whose
aspect is within ``max_ratio`` (4:1); sizes are ``(hp * patch_multiple, wp * patch_multiple)``. An image goes to the
bucket that keeps the largest fraction of it after an aspect-preserving cover resize (equivalently the closest
aspect ratio in log space), is resized to cover it (box halving, then bicubic) and cropped to exactly that size.
"""
from .buckets import closest_bucket, make_buckets
from .cache import FeatureCache, content_key, text_key
from .dataset import IMAGE_EXTENSIONS, ImageCaptionDataset, collate
from .sampler import epochs, load_loader_state, loader_state, make_loader
from .tensors import TENSOR_EXTENSIONS, TensorCaptionDataset, is_tensor_jsonl, write_tensor_dataset

__all__ = ["IMAGE_EXTENSIONS", "TENSOR_EXTENSIONS", "make_buckets", "closest_bucket", "ImageCaptionDataset",
           "TensorCaptionDataset", "write_tensor_dataset", "is_tensor_jsonl", "collate", "FeatureCache", "content_key", "text_key",
           "make_loader", "epochs", "loader_state", "load_loader_state"]
