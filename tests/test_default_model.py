"""The bundled default model (lumina/assets/default_model): it loads with no network, follows prompts (a pixel-
statistics judge: shape colour and background colour), still draws recognisable shapes at 2x its training size,
and `lumina generate` with no --model uses it."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lumina
from lumina.pipelines import loading as generate_module
from lumina.training.shapes import judge
from lumina.training.shapes_eval import evaluate

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "lumina" / "assets" / "default_model"


@pytest.fixture(scope="module")
def pipe():
    assert (BUNDLED / "transformer" / "consolidated_ema.00-of-01.safetensors").is_file(), "bundled model missing"
    return lumina.load_pipeline(BUNDLED, device="cpu")


def test_bundled_model_is_the_default(monkeypatch):
    monkeypatch.delenv("LUMINA_MODEL", raising=False)
    assert generate_module.default_model_path() == BUNDLED
    size = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"bundled model is {size / 2**20:.1f} MiB"


@pytest.mark.slow
def test_prompt_adherence(pipe):
    """Held-out random captions (every template), judged on the pixels: at least 80% right."""
    r = evaluate(pipe, n=40, seed=11)
    assert r["correct"] >= 0.8, {k: r[k] for k in ("correct", "background", "shape_color", "position")}


@pytest.mark.slow
def test_twice_the_training_size_is_still_recognisable(pipe):
    r = evaluate(pipe, n=12, seed=12, size=2 * pipe.default_size, rope_scaling="time_aware")
    assert r["correct"] >= 0.6, {k: r[k] for k in ("correct", "background", "shape_color", "position")}


def test_readme_first_command(tmp_path, monkeypatch):
    """`lumina generate "a red circle on a blue background" -o out.png` with no --model, in a fresh process."""
    out = tmp_path / "out.png"
    env = {k: v for k, v in __import__("os").environ.items() if k != "LUMINA_MODEL"}
    r = subprocess.run([sys.executable, "-m", "lumina", "generate", "a red circle on a blue background", "--seed",
                        "0", "-o", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    img = Image.open(out)
    assert img.format == "PNG"
    verdict = judge(img.convert("RGB"), "a red circle on a blue background")
    assert verdict["shape_present"] and np.asarray(img).std() > 10
