"""The bundled default model (lumina/assets/default_model): it loads with no network, follows prompts of every
phrasing (a pixel-statistics judge: shape, shape colour, background colour, position), draws the README's circle,
still draws recognisable shapes at 2x its training size, warns about words it does not know, and `lumina generate`
with no --model uses it. Thresholds: what the landed model drew, minus 10 points (see FLOORS)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import lumina
from lumina.pipelines import loading as generate_module
from lumina.conditioning.vocabulary import UnknownWordsWarning
from lumina.training.shapes import judge
from lumina.training.shapes_eval import evaluate

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "lumina" / "assets" / "default_model"
WEIGHTS = BUNDLED / "transformer" / "model.safetensors"
README_PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def pipe():
    assert WEIGHTS.is_file(), "bundled model missing"
    return lumina.load_pipeline(BUNDLED, device="cpu")


def test_bundled_model_is_the_default(monkeypatch):
    monkeypatch.delenv("LUMINA_MODEL", raising=False)
    assert generate_module.default_model_path() == BUNDLED
    assert WEIGHTS.stat().st_size <= 15 * 10**6, f"bundled weights are {WEIGHTS.stat().st_size / 1e6:.1f} MB"
    with safe_open(str(WEIGHTS), "pt") as f:  # stored in bf16
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


def rates(r: dict) -> dict:
    return {k: r[k] for k in ("correct", "shape", "background", "shape_color", "position")}


# What the bundled model drew on the 40 captions of test_prompt_adherence (seed 11) when it landed, minus 10 points:
# a regression guard. The goals (shape 90%, colours 97%, position 95% on 200 captions) are not met yet: the
# README's table has the 200-caption figures.
FLOORS = {"shape": 0.50, "shape_color": 0.82, "background": 0.76, "position": 0.85}


@pytest.mark.slow
def test_prompt_adherence(pipe):
    """40 held-out captions of every phrasing (with and without a position and a background), judged on the
    pixels against what each names."""
    r = evaluate(pipe, n=40, seed=11)
    assert all(r[k] >= v for k, v in FLOORS.items()), rates(r)


@pytest.mark.slow
def test_readme_prompt_draws_a_circle(pipe):
    """The README's first prompt, one image per seed as `lumina generate --seed S` draws it: a red circle on blue
    for seed 0 (the README's) and for at least 9 of seeds 0-9."""
    verdicts = [judge(pipe(README_PROMPT, seed=s, progress=False)[0], README_PROMPT) for s in range(10)]
    assert verdicts[0]["correct"], verdicts[0]
    assert sum(v["correct"] for v in verdicts) >= 9, [(v["shape"], v["color"], v["background"]) for v in verdicts]


@pytest.mark.slow
def test_twice_the_training_size_is_still_recognisable(pipe):
    r = evaluate(pipe, n=12, seed=12, size=2 * pipe.default_size, rope_scaling="time_aware")
    # the landed model at 2x, minus 10 points: background 100%, shape colour 25% (run 1's model drew 83%)
    assert r["shape_color"] >= 0.15 and r["background"] >= 0.9, rates(r)


def test_unknown_words_warn_by_name(pipe):
    """A prompt outside the training vocabulary fails softly: a warning naming the unknown words."""
    assert "circle" in pipe.config.vocabulary and "hexagon" not in pipe.config.vocabulary
    with pytest.warns(UnknownWordsWarning, match="'pink', 'hexagon'"):
        pipe.encode_prompts(["a pink hexagon on a blue background"], None)
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        pipe.encode_prompts([README_PROMPT, "bottom left: an orange triangle"], [""])


def test_readme_first_command(tmp_path, monkeypatch):
    """`lumina generate "a red circle on a blue background" -o out.png` with no --model, in a fresh process."""
    out = tmp_path / "out.png"
    env = {k: v for k, v in __import__("os").environ.items() if k != "LUMINA_MODEL"}
    r = subprocess.run([sys.executable, "-m", "lumina", "generate", README_PROMPT, "--seed",
                        "0", "-o", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    img = Image.open(out)
    assert img.format == "PNG"
    verdict = judge(img.convert("RGB"), README_PROMPT)
    assert verdict["correct"] and verdict["shape"] == "circle" and np.asarray(img).std() > 10, verdict


def test_cli_names_unknown_words_in_one_line(tmp_path):
    """`lumina generate` outside the vocabulary still draws, with one warning line naming the words."""
    r = subprocess.run([sys.executable, "-m", "lumina", "generate", "a pink hexagon", "--steps", "1", "--seed", "0",
                        "-o", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={k: v for k, v in __import__("os").environ.items() if k != "LUMINA_MODEL"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x.png").is_file()
    lines = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].startswith("lumina generate: warning: the model does not know the word(s) "
                                                   "'pink', 'hexagon'"), r.stderr
