"""Training data layer: buckets, ImageCaptionDataset (folder / JSONL), collate, FeatureCache, the resumable loader."""
import io
import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from lumina.training.data import (
    FeatureCache,
    ImageCaptionDataset,
    closest_bucket,
    collate,
    content_key,
    epochs,
    load_loader_state,
    loader_state,
    make_buckets,
    make_loader,
    text_key,
)

SIZES = {"tall": (40, 90), "square": (64, 64), "wide": (100, 30)}  # name -> (W, H)


def _image(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for i, (name, (w, h)) in enumerate(SIZES.items()):
        ext = ".png" if name != "square" else ".jpg"
        sub = "sub/" if name == "wide" else ""
        _image(w, h, i).save(d / f"{sub}{name}{ext}")
        (d / f"{sub}{name}.txt").write_text(f"  a {name} picture\n")
    _image(50, 50, 9).save(d / "nocaption.webp")  # no .txt: skipped at indexing
    return d


def _jsonl(folder, tmp_path, extra_lines=()):
    lines = []
    for p in sorted(folder.rglob("*")):
        if p.suffix in (".png", ".jpg") and p.with_suffix(".txt").exists():
            rec = {"path": p.relative_to(folder).as_posix(), "caption": p.with_suffix(".txt").read_text().strip()}
            rec["score"] = 7
            lines.append(json.dumps(rec))
    lines.extend(extra_lines)
    f = folder / "data.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


# ------------------------------------------------------------------------------------------------------------ buckets


def _official_walk(num_patches, patch_size, max_ratio=4.0):
    """Verbatim copy of the official lumina_next_t2i/imgproc.py generate_crop_size_list (returns (w, h))."""
    crop_size_list = []
    wp, hp = num_patches, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            crop_size_list.append((wp * patch_size, hp * patch_size))
        if (hp + 1) * wp <= num_patches:
            hp += 1
        else:
            wp -= 1
    return crop_size_list


@pytest.mark.parametrize("resolution,pm", [(64, 16), (256, 16), (1024, 16), (32, 2), (100, 16), (48, 8)])
def test_buckets_budget_multiples_ratio(resolution, pm):
    b = make_buckets(resolution, pm)
    assert b and len(set(b)) == len(b)
    for h, w in b:
        assert h % pm == 0 and w % pm == 0
        assert h * w <= resolution**2
        assert max(h, w) / min(h, w) <= 4.0
    assert set(b) == {(w, h) for h, w in b}  # symmetric
    aspects = [h / w for h, w in b]
    assert len(set(aspects)) == len(aspects)
    if resolution % pm == 0:
        n = (resolution // pm) ** 2
        assert b == [(h, w) for w, h in _official_walk(n, pm)]
        assert (resolution, resolution) in b
        # each bucket is the largest grid of its aspect ratio within the budget (not necessarily area-maximal:
        # the official staircase also keeps e.g. 32x80 next to 48x80 at resolution 64)
        for h, w in b:
            g = math.gcd(h // pm, w // pm)
            k = g + 1
            assert (k * (h // pm // g)) * (k * (w // pm // g)) > n


def test_buckets_square_and_max_tokens():
    assert make_buckets(256, 16, max_ratio=1.0) == [(256, 256)]
    assert make_buckets(100, 16, max_ratio=1.0) == [(96, 96)]
    b = make_buckets(1024, 16, max_tokens=256)  # token cap tightens the budget to 256 patches
    assert all((h // 16) * (w // 16) <= 256 for h, w in b) and (256, 256) in b
    with pytest.raises(ValueError, match="patch"):
        make_buckets(8, 16)


def test_closest_bucket_matches_official_choice():
    b = make_buckets(256, 16)
    for H, W in [(90, 40), (30, 100), (64, 64), (1000, 10), (333, 777)]:
        got = closest_bucket(H, W, b)
        rem = [min(cw / W, ch / H) / max(cw / W, ch / H) for ch, cw in b]
        assert max(rem) == pytest.approx(min(got[0] / H, got[1] / W) / max(got[0] / H, got[1] / W))
    assert closest_bucket(64, 64, b) == (256, 256)
    assert closest_bucket(1000, 10, b) == (512, 128)  # clamped to 4:1


# ------------------------------------------------------------------------------------------------------------ dataset


def test_folder_items_shape_range_aspect(folder):
    ds = ImageCaptionDataset(folder, resolution=64, patch_multiple=16)
    assert len(ds) == 3 and ds.missing_captions == 1
    assert [ds.key(i) for i in range(3)] == ["square.jpg", "sub/wide.png", "tall.png"]
    for i in range(len(ds)):
        item = ds[i]
        img = item["image"]
        assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[0] == 3
        h, w = img.shape[1:]
        assert h % 16 == 0 and w % 16 == 0 and h * w <= 64 * 64
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05
        name = item["key"].split("/")[-1].split(".")[0]
        W, H = SIZES[name]
        assert item["caption"] == f"a {name} picture" and item["index"] == i
        assert (h, w) == closest_bucket(H, W, ds.buckets)
        assert abs(math.log((h / w) / (H / W))) < math.log(1.6)  # aspect close to the source's
    assert ds[2]["image"].shape[1] > ds[2]["image"].shape[2]  # tall stays tall
    assert ds[1]["image"].shape[2] > ds[1]["image"].shape[1]  # wide stays wide


def test_pixel_space_patch2_and_square_mode(folder):
    ds = ImageCaptionDataset(folder, resolution=32, patch_multiple=2)
    for i in range(len(ds)):
        h, w = ds[i]["image"].shape[1:]
        assert h % 2 == 0 and w % 2 == 0 and h * w <= 32 * 32
    sq = ImageCaptionDataset(folder, resolution=48, patch_multiple=16, buckets="square")
    assert sq.buckets == [(48, 48)]
    assert all(sq[i]["image"].shape == (3, 48, 48) for i in range(len(sq)))


def test_center_crop_content(tmp_path):
    # 64x32 image (H=32, W=64) with a 2:1 bucket: no crop needed, pixel values preserved by an identity resize.
    arr = np.random.default_rng(0).integers(0, 256, size=(32, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("x")
    ds = ImageCaptionDataset(tmp_path, resolution=64, patch_multiple=16, buckets=[(32, 64)])
    torch.testing.assert_close(ds[0]["image"], torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    assert ds[0]["crop"] == (0, 0, 32, 64)


def test_random_crop_deterministic(folder):
    kw = dict(resolution=64, patch_multiple=16, random_crop=True)
    a, b = ImageCaptionDataset(folder, seed=3, **kw), ImageCaptionDataset(folder, seed=3, **kw)
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"])
    # across epochs / seeds, the crop offsets vary (wide image: lots of horizontal slack)
    i = [k for k in range(len(a)) if a.key(k).endswith("wide.png")][0]
    crops = set()
    for e in range(12):
        a.set_epoch(e)
        crops.add(a[i]["crop"])
    assert len(crops) > 1
    a.set_epoch(5), b.set_epoch(5)
    assert torch.equal(a[i]["image"], b[i]["image"])
    c = ImageCaptionDataset(folder, resolution=64, patch_multiple=16, buckets=[(32, 32)])
    c2 = ImageCaptionDataset(folder, resolution=64, patch_multiple=16, buckets=[(32, 32)])
    c.set_epoch(1)
    assert torch.equal(c[i]["image"], c2[i]["image"])  # center crop: epoch-independent


def test_folder_jsonl_parity(folder, tmp_path):
    f = _jsonl(folder, tmp_path)
    a = ImageCaptionDataset.from_source(folder, resolution=64, patch_multiple=16)
    b = ImageCaptionDataset.from_source(f, resolution=64, patch_multiple=16)
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert x["key"] == y["key"] and x["caption"] == y["caption"]
        assert torch.equal(x["image"], y["image"])
        assert x["meta"] == {} and y["meta"] == {"score": 7}


def test_jsonl_absolute_path(folder, tmp_path):
    f = tmp_path / "abs.jsonl"
    p = str(folder / "tall.png")
    f.write_text(json.dumps({"path": p, "caption": "c"}) + "\n\n")
    ds = ImageCaptionDataset(f, resolution=64)
    assert len(ds) == 1 and ds[0]["key"] == (folder / "tall.png").as_posix()


@pytest.mark.parametrize(
    "bad,match",
    [("{not json", "line 4"), ('["a list"]', "line 4"), ('{"path": "x.png"}', "line 4.*caption"),
     ('{"path": 3, "caption": "c"}', "line 4.*path")],
)
def test_malformed_jsonl_names_line(folder, tmp_path, bad, match):
    f = _jsonl(folder, tmp_path, extra_lines=[bad])  # 3 good lines, then the bad one on line 4
    with pytest.raises(ValueError, match=match):
        ImageCaptionDataset(f, resolution=64)


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageCaptionDataset(tmp_path / "nope", resolution=64)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="x.csv"):
        ImageCaptionDataset.from_source(tmp_path / "x.csv", resolution=64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        ImageCaptionDataset(tmp_path / "empty", resolution=64)
    (tmp_path / "e2").mkdir()
    with pytest.raises(ValueError, match="bucket"):
        ImageCaptionDataset(tmp_path / "e2", resolution=64, buckets=[(30, 32)])
    with pytest.raises(ValueError, match="square"):
        ImageCaptionDataset(tmp_path / "e2", resolution=64, buckets="rect")


def test_corrupt_and_missing_images_skipped(folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (folder / "broken.txt").write_text("broken")
    f = _jsonl(folder, tmp_path, extra_lines=[json.dumps({"path": "gone.png", "caption": "missing"})])
    ds = ImageCaptionDataset(f, resolution=64, patch_multiple=16)
    keys = [ds.key(i) for i in range(len(ds))]
    ib, ig = keys.index("broken.png"), keys.index("gone.png")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
        assert ds[ib] is None  # second read of the same bad file: counted, not warned again
    msgs = [str(w.message) for w in rec]
    assert sum("broken.png" in m for m in msgs) == 1 and sum("gone.png" in m for m in msgs) == 1
    assert items[ib] is None and items[ig] is None
    assert ds.skipped == 3
    batch = collate(items)
    assert len(batch["images"]) == len(ds) - 2 and batch["dropped"] == 2
    assert "broken.png" not in batch["keys"] and batch["indices"].dtype == torch.int64
    assert batch["indices"].tolist() == [i for i in range(len(ds)) if i not in (ib, ig)]
    assert collate([None, None]) is None


def test_dataloader_with_workers(folder):
    ds = ImageCaptionDataset(folder, resolution=64, patch_multiple=16)
    dl = make_loader(ds, 2, seed=1, num_workers=1)
    seen = [i for batch in dl for i in batch["indices"].tolist()]
    assert seen == torch.randperm(len(ds), generator=torch.Generator().manual_seed(1)).tolist()


# ------------------------------------------------------------------------------------------------------------ cache


def test_feature_cache_roundtrip(tmp_path):
    cache = FeatureCache(tmp_path, "sdxl-vae@64")
    k = FeatureCache.key("img", b"\x00\x01")
    assert len(k) == 64 and k == cache.key("img", b"\x00\x01") and k != cache.key("im", "g\x00\x01")
    assert k not in cache and cache.get(k) is None and cache.misses == 1
    base = torch.randn(2, 4, 8, 8)
    t = {"latent": base[0], "mask": torch.ones(3, dtype=torch.bool), "half": torch.randn(5).half()}
    cache.put(k, t)
    assert k in cache
    p = tmp_path / "sdxl-vae@64" / k[:2] / f"{k}.safetensors"
    assert p.is_file() and cache.path(k) == p
    got = cache.get(k)
    assert cache.hits == 1 and set(got) == set(t)
    for name in t:
        assert got[name].dtype == t[name].dtype and torch.equal(got[name], t[name])
    with pytest.raises(ValueError):
        cache.get("not-a-key")
    with pytest.raises(ValueError):
        FeatureCache(tmp_path, "../escape")


def test_feature_cache_leftover_temp_ignored(tmp_path):
    cache = FeatureCache(tmp_path, "ns")
    k = cache.key("x")
    shard = tmp_path / "ns" / k[:2]
    shard.mkdir(parents=True)
    tmp = shard / f".tmp-{k}.part"
    tmp.write_bytes(b"half a safetens")  # what a killed writer could leave
    assert k not in cache and cache.get(k) is None
    cache.put(k, {"a": torch.arange(4)})
    assert torch.equal(cache.get(k)["a"], torch.arange(4))
    assert tmp.exists() and cache.clean_temp(older_than_s=0) == 1 and not tmp.exists()
    assert [q.name for q in shard.iterdir()] == [f"{k}.safetensors"]


def test_feature_cache_corrupt_entry_deleted(tmp_path):
    cache = FeatureCache(tmp_path, "ns")
    k = cache.key("y")
    cache.put(k, {"a": torch.randn(3, 3)})
    p = cache.path(k)
    p.write_bytes(p.read_bytes()[:20])  # truncated
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert cache.get(k) is None
    assert not p.exists() and k not in cache and cache.misses == 1
    cache.put(k, {"a": torch.zeros(2)})
    assert torch.equal(cache.get(k)["a"], torch.zeros(2))


def test_content_and_text_keys(folder):
    p = folder / "tall.png"
    import hashlib

    assert content_key(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    a, b = content_key(p, crop=(0, 0, 48, 32)), content_key(p, crop=(0, 16, 48, 32))
    assert a != b and a != content_key(p) and a == content_key(p, crop=[0, 0, 48, 32])
    assert content_key(p) != content_key(folder / "square.jpg")
    assert text_key("gemma-2b", "a cat") == text_key("gemma-2b", "a cat")
    assert text_key("gemma-2b", "a cat") != text_key("t5", "a cat") != text_key("gemma-2b", "a dog")


# ------------------------------------------------------------------------------------------------------------ sampler


def _take(it, k):
    return [next(it) for _ in range(k)]


def _roundtrip(state):  # as a checkpoint stores it: torch.save, then torch.load(weights_only=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_loader_order_epochs_and_ranks():
    """DistributedSampler's order: randperm seeded with seed + epoch, padded by wrapping, strided by rank."""
    def ints(n, batch, **kw):
        return make_loader(list(range(n)), batch, collate_fn=default_collate, **kw)

    def perm(n, seed):
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()

    got = [i for b in _take(epochs(ints(10, 3, seed=4)), 9) for i in b.tolist()]
    assert got == perm(10, 4) + perm(10, 5) + perm(10, 6)[:3]  # 4 batches an epoch, the last one short
    assert [b.tolist() for b in ints(5, 5, shuffle=False)] == [[0, 1, 2, 3, 4]]
    for n, ws in [(12, 3), (11, 2)]:
        shards = [[i for b in ints(n, 4, seed=7, rank=r, world_size=ws) for i in b.tolist()] for r in range(ws)]
        padded = (perm(n, 7) * 2)[: len(shards[0]) * ws]
        assert shards == [padded[r::ws] for r in range(ws)]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_mid_epoch_at_the_next_batch(folder, workers):
    """Saved after k batches (mid-epoch, at an epoch end, in the next epoch), through torch.save/load, with
    workers that prefetch ahead: the restored loader yields exactly the batches an uninterrupted one does."""
    ds = ImageCaptionDataset(folder, resolution=64, patch_multiple=16)  # 3 images: 2 batches an epoch, 1 a rank
    for ws, rank in [(1, 0), (2, 1)]:
        def loader():
            return make_loader(ds, 2, seed=3, rank=rank, world_size=ws, num_workers=workers)

        want = [b["indices"].tolist() for b in _take(epochs(loader()), 7)]
        for k in (1, 2, 3, 4):
            head_loader = loader()
            it = epochs(head_loader)
            head = [b["indices"].tolist() for b in _take(it, k)]
            state = _roundtrip(loader_state(head_loader))
            resumed = loader()
            load_loader_state(resumed, state)
            tail = [b["indices"].tolist() for b in _take(epochs(resumed), 7 - k)]
            assert head + tail == want, (ws, rank, k)
