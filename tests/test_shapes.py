"""Synthetic shapes data (lumina.training.shapes): specs, captions, rendering, datasets, prompt parsing, judge."""
import dataclasses
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lumina.training.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    TEMPLATE_GROUPS,
    TEMPLATES,
    caption_and_fields,
    named_fields,
    ShapesDataset,
    ShapeSpec,
    adherence,
    caption,
    judge,
    parse_prompt,
    random_spec,
    render,
    write_dataset,
)


@pytest.fixture
def rng(fresh_seed):
    return random.Random(fresh_seed)


def _other(rng, *exclude):
    return rng.choice([c for c in COLORS if c not in exclude])


# ------------------------------------------------------------------------------------------- specs / captions


def test_spec_validation():
    with pytest.raises(ValueError):
        ShapeSpec("circle", "red", "red")
    with pytest.raises(ValueError):
        ShapeSpec("hexagon", "red", "blue")
    with pytest.raises(ValueError):
        ShapeSpec("circle", "pink", "blue")
    with pytest.raises(ValueError):
        ShapeSpec("circle", "red", "blue", position="nowhere")
    s = ShapeSpec("circle", "red", "blue", "top left", 0.4)
    assert ShapeSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("kind", ["random", "numpy"])
def test_random_spec_covers_vocab(kind, fresh_seed):
    r = random.Random(fresh_seed) if kind == "random" else np.random.default_rng(fresh_seed)
    specs = [random_spec(r) for _ in range(600)]
    assert all(s.color != s.background for s in specs)
    assert {s.shape for s in specs} == set(SHAPES)
    assert {s.color for s in specs} == set(COLORS)
    assert {s.background for s in specs} == set(COLORS)
    assert {s.position for s in specs} == set(POSITIONS)


def test_captions_name_what_their_fields_say(rng):
    seen, groups = set(), set()
    for _ in range(400):
        s = random_spec(rng)
        text, named = caption_and_fields(s, rng)
        pattern = text.replace(s.color, "C").replace(s.background, "B").replace(s.shape, "S").replace(s.position, "P")
        seen.add(pattern.replace("an C", "a C").replace("an B", "a B"))
        groups.add((named["position"] is not None, named["background"] is not None))
        assert named["shape"] == s.shape and named["color"] == s.color
        for word in (s.color, s.shape):
            assert word in text
        assert (s.position in text) == (named["position"] is not None), text
        assert (named["background"] is None) or s.background in text
        assert named["position"] in (None, s.position) and named["background"] in (None, s.background)
    assert groups == set(TEMPLATE_GROUPS)  # with and without a position, with and without a background
    assert len(seen) == len(TEMPLATES)  # every phrasing drawn
    assert caption(ShapeSpec("circle", "red", "blue", "top left")) == "a red circle at the top left on a blue background"
    assert caption(ShapeSpec("circle", "orange", "blue")).startswith("an orange circle")


@pytest.mark.parametrize("template", range(len(TEMPLATES)))
def test_parse_prompt_round_trips_captions(template, rng):
    for _ in range(100):
        s = random_spec(rng)
        text = caption(s, template=template)
        assert parse_prompt(text) == named_fields(s, template), text


def test_parse_free_prompts():
    p = parse_prompt("a red circle on a blue background")
    assert p == {"shape": "circle", "color": "red", "background": "blue", "position": None}
    p = parse_prompt("Blue square, top-left, on white")
    assert p == {"shape": "square", "color": "blue", "background": "white", "position": "top left"}
    p = parse_prompt("a violet triangle in the upper right corner against a black backdrop")
    assert p == {"shape": "triangle", "color": "purple", "background": "black", "position": "top right"}
    p = parse_prompt("red background, green dot bottom left")
    assert p == {"shape": "circle", "color": "green", "background": "red", "position": "bottom left"}
    p = parse_prompt("the background is orange and a purple box in the middle")
    assert p == {"shape": "square", "color": "purple", "background": "orange", "position": "center"}
    assert parse_prompt("a pink hexagon somewhere") == {"shape": None, "color": None, "background": None,
                                                         "position": None}
    assert parse_prompt("a yellow triangle") == {"shape": "triangle", "color": "yellow", "background": None,
                                                 "position": None}


# ------------------------------------------------------------------------------------------- rendering / judge


@pytest.mark.parametrize("size", [32, 64])
def test_judge_accepts_ground_truth(size, rng):
    n, correct, position = 300, 0, 0
    for _ in range(n):
        s = random_spec(rng)
        img = render(s, size=size, rng=rng)
        assert img.mode == "RGB" and img.size == (size, size)
        r = judge(img, s)
        correct += r["correct"]
        position += r["position_ok"]
    assert correct / n >= 0.99
    assert position / n >= 0.99


def test_render_is_antialiased_and_deterministic():
    s = ShapeSpec("circle", "red", "blue", "center", 0.5)
    a = np.asarray(render(s))
    assert np.array_equal(a, np.asarray(render(s)))  # no rng -> no jitter
    colours = {tuple(p) for p in a.reshape(-1, 3)}
    assert COLORS["red"] in colours and COLORS["blue"] in colours
    assert len(colours) > 2  # blended edge pixels
    assert not np.array_equal(np.asarray(render(s, rng=random.Random(0))), np.asarray(render(s, rng=random.Random(1))))


def test_judge_rejects_wrong_specs(rng):
    for _ in range(100):
        s = random_spec(rng)
        img = render(s, rng=rng)
        wrong_bg = dataclasses.replace(s, background=_other(rng, s.color, s.background))
        r = judge(img, wrong_bg)
        assert r["background_ok"] is False and r["shape_color_ok"] is True and not r["correct"]
        wrong_col = dataclasses.replace(s, color=_other(rng, s.color, s.background))
        r = judge(img, wrong_col)
        assert r["shape_color_ok"] is False and r["background_ok"] is True and not r["correct"]
        swapped = dataclasses.replace(s, color=s.background, background=s.color)
        r = judge(img, swapped)
        assert r["background_ok"] is False and r["shape_color_ok"] is False and not r["correct"]


def test_judge_rejects_noise_and_flat_images(rng):
    for _ in range(50):
        s = random_spec(rng)
        r = judge(torch.rand(3, 32, 32), s)
        assert r["shape_color_ok"] is False and not r["correct"]
    for name, rgb in COLORS.items():
        flat = Image.new("RGB", (32, 32), rgb)
        s = ShapeSpec("square", _other(rng, name), name)
        r = judge(flat, s)
        assert r["background_ok"] is True
        assert r["shape_color_ok"] is False and r["shape_present"] is False and not r["correct"]


def test_judge_inputs_and_prompts():
    s = ShapeSpec("triangle", "green", "white", "bottom right", 0.45)
    img = render(s)
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    for x in (img, t, np.asarray(img), np.asarray(img) / 255.0):
        assert judge(x, s)["correct"]
    r = judge(img, "a green triangle on a white background")
    assert r["correct"] and r["position_ok"] is None
    assert judge(img, {"color": "green"})["correct"]
    assert not judge(img, "a red triangle on a white background")["correct"]
    with pytest.raises(ValueError):
        judge(torch.rand(1, 32, 32), s)


def test_adherence(rng):
    specs = [random_spec(rng) for _ in range(20)]
    images = torch.stack([torch.from_numpy(np.asarray(render(s, rng=rng)).copy()).permute(2, 0, 1) for s in specs])
    images = images.float() / 255
    a = adherence(images, specs)
    assert a["n"] == 20 and a["correct"] == a["background"] == a["shape_color"] == a["position"] == 1.0
    wrong = [dataclasses.replace(s, color=_other(rng, s.color, s.background)) if i % 4 == 0 else s
             for i, s in enumerate(specs)]
    a = adherence(list(images), wrong)
    assert a["correct"] == pytest.approx(0.75) and a["shape_color"] == pytest.approx(0.75)
    assert a["background"] == 1.0
    a = adherence(images[:2], ["a circle", "a square"])
    assert a["background"] is None and a["position"] is None
    with pytest.raises(ValueError):
        adherence(images[:3], specs[:2])


# ------------------------------------------------------------------------------------------- datasets


def test_dataset_deterministic(fresh_seed):
    ds = ShapesDataset(50, size=32, seed=fresh_seed)
    assert len(ds) == 50
    a, b = ds[7], ShapesDataset(50, size=32, seed=fresh_seed)[7]
    assert a["image"].dtype == torch.float32 and a["image"].shape == (3, 32, 32)
    assert 0.0 <= a["image"].min() and a["image"].max() <= 1.0
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"] and a["spec"] == b["spec"]
    assert not torch.equal(a["image"], ds[8]["image"])
    assert not torch.equal(a["image"], ShapesDataset(50, seed=fresh_seed + 1)[7]["image"])
    assert ds.spec(7).to_dict() == a["spec"]
    assert torch.equal(ds[-1]["image"], ds[49]["image"])
    with pytest.raises(IndexError):
        ds[50]
    for i in range(20):
        item = ds[i]
        assert judge(item["image"], item["spec"])["correct"]
        parsed = parse_prompt(item["caption"])  # what the caption names is the spec's; what it leaves out is None
        assert parsed["shape"] == item["spec"]["shape"] and parsed["color"] == item["spec"]["color"]
        assert all(parsed[k] in (None, item["spec"][k]) for k in ("background", "position")), item["caption"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4
    assert list(batch["spec"]["color"]) == [ds[i]["spec"]["color"] for i in range(4)]
    assert ShapesDataset(3, size=64)[0]["image"].shape == (3, 64, 64)


def test_write_dataset(tmp_path, fresh_seed):
    n = 25
    jsonl = write_dataset(tmp_path / "shapes", n, size=32, seed=fresh_seed)
    assert jsonl == tmp_path / "shapes" / "captions.jsonl"
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == n
    ds = ShapesDataset(n, size=32, seed=fresh_seed)
    for i, rec in enumerate(lines):
        assert rec["path"] == f"images/{i:05d}.png"
        item = ds[i]
        assert rec["caption"] == item["caption"] and rec["spec"] == item["spec"]
        with Image.open(jsonl.parent / rec["path"]) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
            px = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
        assert torch.equal(px, item["image"])  # PNG is lossless
        assert judge(px, rec["spec"])["correct"]


def test_judge_tells_the_shape_of_every_ground_truth_render():
    """Every shape x colour pair x position, jittered, at 32 px (840 renders) and a few at 64 px: the shape is
    named right every time."""
    import itertools
    import random as _random

    from lumina.training.shapes import COLORS, POSITIONS, SHAPES, SIZE_RANGE, ShapeSpec, judge, render

    rng = _random.Random(3)
    wrong = []
    pairs = [(c, b) for c in COLORS for b in COLORS if c != b]
    for shape, (c, b), pos in itertools.product(SHAPES, pairs, POSITIONS):
        spec = ShapeSpec(shape, c, b, pos, size=round(rng.uniform(*SIZE_RANGE), 3))
        for size in (32,) if rng.random() > 0.05 else (32, 64):
            v = judge(render(spec, size, rng=rng), spec)
            if not v["shape_ok"]:
                wrong.append((spec, size, v["shape"], v["corners"]))
    assert not wrong, wrong[:5]
