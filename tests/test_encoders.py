"""lumina.pipelines.encoders on tiny random components built in code (lumina.pipelines.tiny): nothing downloads."""
import shutil
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from lumina.pipelines import LatentCodec, PixelCodec, TextEncoder, VAECodec, to_pil  # noqa: E402
from lumina.pipelines.tiny import build_tiny_gemma, build_tiny_tokenizer, build_tiny_vae  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory):
    return build_tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"))


@pytest.fixture(scope="session")
def vae_dir(tmp_path_factory):
    return build_tiny_vae(tmp_path_factory.mktemp("tiny_vae"))


@pytest.fixture(scope="module")
def te(gemma_dir):
    return TextEncoder.from_pretrained(gemma_dir)


@pytest.fixture(scope="module")
def codec(vae_dir):
    return VAECodec.from_pretrained(vae_dir)


def n_tokens(te, prompt):
    return len(te.tokenizer(prompt)["input_ids"])


# ---------------------------------------------------------------------------------------------------- TextEncoder


def test_text_encoder_loads_tiny_gemma(te):
    assert isinstance(te.model, transformers.GemmaModel)
    assert te.dim == 32 and te.device == torch.device("cpu") and te.dtype == torch.float32
    assert te.tokenizer.padding_side == "right"
    assert te.layer == -2 and te.max_length == 256


def test_encode_shapes_and_right_padded_mask(te):
    prompts = ["a red cat sitting on a mat", "dog"]
    feats, mask = te.encode(prompts)
    lengths = [n_tokens(te, p) for p in prompts]
    assert lengths == [len(prompts[0]) + 1, 4]  # character level + <bos>
    B, L, D = feats.shape
    assert (B, D) == (2, 32) and mask.shape == (2, L)
    assert L % 8 == 0 and max(lengths) <= L < max(lengths) + 8 and L <= te.max_length
    assert mask.dtype == torch.bool and feats.dtype == torch.float32
    assert feats.device == mask.device == te.device
    for row, n in zip(mask, lengths):
        assert row[:n].all() and not row[n:].any()
    assert torch.isfinite(feats).all()
    assert not feats.requires_grad  # no autograd graph even outside no_grad / inference_mode


def test_encode_single_string_is_a_batch_of_one(te):
    feats, mask = te.encode("a cat")
    feats2, mask2 = te.encode(["a cat"])
    assert feats.shape[0] == 1
    torch.testing.assert_close(feats, feats2, rtol=0, atol=0)
    assert torch.equal(mask, mask2)


def test_padding_does_not_change_valid_tokens(te):
    short, long = "a cat", "an astronaut riding a horse on the moon, oil painting"
    feats, mask = te.encode([short, long])
    alone, alone_mask = te.encode(short)
    n = int(alone_mask.sum())
    assert n == int(mask[0].sum()) == len(short) + 1
    assert feats.shape[1] > alone.shape[1]  # the batch pads the short prompt further
    torch.testing.assert_close(feats[0, :n], alone[0, :n], rtol=0, atol=ATOL)
    long_alone, _ = te.encode(long)
    m = int(mask[1].sum())
    torch.testing.assert_close(feats[1, :m], long_alone[0, :m], rtol=0, atol=ATOL)


@pytest.mark.parametrize("layer", [-2, -1, 0, 1])
def test_layer_matches_direct_model_call(te, gemma_dir, layer):
    enc = TextEncoder(te.tokenizer, te.model, layer=layer)
    prompts = ["a photo of a dog", "sunset"]
    feats, mask = enc.encode(prompts)
    tok = te.tokenizer(prompts, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    with torch.no_grad():
        out = te.model(**tok, output_hidden_states=True)
    assert len(out.hidden_states) == 3  # embeddings + one per layer (2 layers)
    assert torch.equal(mask, tok["attention_mask"].bool())
    torch.testing.assert_close(feats, out.hidden_states[layer], rtol=0, atol=ATOL)
    if layer == -1:  # the last entry is the final-normed output
        torch.testing.assert_close(feats, out.last_hidden_state, rtol=0, atol=0)
    if layer == -2:  # not the last hidden state
        assert not torch.allclose(feats, out.last_hidden_state, atol=1e-3)


def test_layer_out_of_range_is_rejected(te):
    with pytest.raises(ValueError, match="layer"):
        TextEncoder(te.tokenizer, te.model, layer=3)
    with pytest.raises(ValueError, match="layer"):
        TextEncoder(te.tokenizer, te.model, layer=-4)
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder(te.tokenizer, te.model, max_length=0)


def test_truncation_at_max_length(te):
    enc = TextEncoder(te.tokenizer, te.model, max_length=16)
    prompt = "a very long prompt that is much longer than sixteen characters"
    feats, mask = enc.encode([prompt, "cat"])
    assert feats.shape == (2, 16, 32)
    assert mask[0].all() and int(mask[1].sum()) == 4
    ids, _ = enc.tokenize(prompt)
    assert ids[0, 0].item() == te.tokenizer.bos_token_id
    assert ids[0, 1:].tolist() == te.tokenizer.convert_tokens_to_ids(list(prompt[:15]))
    # Gemma is causal: the truncated features are the prefix of the untruncated ones.
    full, _ = te.encode(prompt)
    torch.testing.assert_close(feats[0], full[0, :16], rtol=0, atol=ATOL)


def test_max_length_not_a_multiple_of_8(te):
    enc = TextEncoder(te.tokenizer, te.model, max_length=20)
    feats, mask = enc.encode(["x" * 50, "ab"])
    assert feats.shape[1] == 20 and mask[0].all() and int(mask[1].sum()) == 3
    feats, mask = enc.encode(["ab"])
    assert feats.shape[1] == 8  # rounded up to 8 when that stays under max_length
    enc = TextEncoder(te.tokenizer, te.model, max_length=5)
    feats, mask = enc.encode(["abcdefgh", ""])
    assert feats.shape[1] == 5 and mask.sum(1).tolist() == [5, 1]


def test_empty_prompt(te):
    feats, mask = te.encode("")
    assert feats.shape == (1, 8, 32)
    assert mask[0].tolist() == [True] + [False] * 7  # just <bos>
    ids, _ = te.tokenize("")
    assert ids[0, 0].item() == te.tokenizer.bos_token_id
    assert torch.isfinite(feats).all()
    # mean pooling over valid tokens is well defined
    pooled = (feats * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert torch.isfinite(pooled).all()
    # "" in a batch (a negative prompt next to a positive one) equals "" alone on its valid token
    both, both_mask = te.encode(["a cat on a mat", ""])
    assert int(both_mask[1].sum()) == 1
    torch.testing.assert_close(both[1, :1], feats[0, :1], rtol=0, atol=ATOL)


def test_tokenizer_without_specials_still_gets_one_valid_token(te):
    from tokenizers import processors

    tok = build_tiny_tokenizer()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    assert tok("")["input_ids"] == []
    enc = TextEncoder(tok, te.model)
    ids, mask = enc.tokenize(["", "ab"])
    assert ids.shape == (2, 8)
    assert mask[0].tolist() == [1] + [0] * 7 and mask[1].tolist() == [1, 1] + [0] * 6
    assert ids[0, 0].item() == tok.bos_token_id
    feats, fmask = enc.encode("")  # a batch of only empty prompts: zero columns from the tokenizer
    assert feats.shape == (1, 8, 32) and fmask.sum().item() == 1 and torch.isfinite(feats).all()


def test_uppercase_and_unknown_characters_tokenize(te):
    ids, mask = te.tokenize(["A Cat", "a cat", "héllo ☃"])
    assert torch.equal(ids[0], ids[1])  # lowercased
    unk = te.tokenizer.unk_token_id
    assert int(mask[2].sum()) == 8 and (ids[2] == unk).sum().item() == 2


def test_bf16_load(gemma_dir):
    enc = TextEncoder.from_pretrained(gemma_dir, dtype=torch.bfloat16, device="cpu", max_length=64)
    assert enc.dtype == torch.bfloat16
    feats, mask = enc.encode(["a cat", ""])
    assert feats.dtype == torch.bfloat16 and mask.dtype == torch.bool and enc.max_length == 64
    ref, _ = TextEncoder.from_pretrained(gemma_dir).encode(["a cat", ""])
    torch.testing.assert_close(feats.float(), ref, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_other_architectures(te, arch):
    """An encoder (BERT-like) and an encoder-decoder (T5: only its encoder runs) behind the same API."""
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    if arch == "bert":
        cfg = transformers.BertConfig(vocab_size=len(tok), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=48, pad_token_id=tok.pad_token_id)
        model = transformers.BertModel(cfg)
    else:
        cfg = transformers.T5Config(vocab_size=len(tok), d_model=24, d_kv=12, d_ff=48, num_layers=2, num_heads=2,
                                    pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.pad_token_id)
        model = transformers.T5Model(cfg)
    enc = TextEncoder(tok, model)
    assert enc.dim == 24
    feats, mask = enc.encode(["a cat", "a dog on a long walk"])
    assert feats.shape == (2, 24, 24) and int(mask[0].sum()) == 6
    alone, _ = enc.encode("a cat")
    torch.testing.assert_close(feats[0, :6], alone[0, :6], rtol=0, atol=ATOL)


def test_save_pretrained_round_trip(te, tmp_path):
    out = te.save_pretrained(tmp_path / "saved")
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    again = TextEncoder.from_pretrained(out)
    prompts = ["a cat", "", "two dogs"]
    f1, m1 = te.encode(prompts)
    f2, m2 = again.encode(prompts)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(f1, f2, rtol=0, atol=0)


def test_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        TextEncoder.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        VAECodec.from_pretrained(missing)


def test_directory_without_config_or_tokenizer(tmp_path, gemma_dir):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty_dir.*config\.json"):
        TextEncoder.from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match=r"empty_dir.*config\.json"):
        VAECodec.from_pretrained(empty)
    no_tok = tmp_path / "model_only"
    no_tok.mkdir()
    shutil.copy(gemma_dir / "config.json", no_tok / "config.json")
    with pytest.raises(FileNotFoundError, match=r"model_only.*tokenizer"):
        TextEncoder.from_pretrained(no_tok)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(FileNotFoundError, match="a_file"):
        TextEncoder.from_pretrained(a_file)


def test_tiny_builders_are_deterministic_and_fast(tmp_path):
    t0 = time.perf_counter()
    a = build_tiny_gemma(tmp_path / "a")
    b = build_tiny_gemma(tmp_path / "b")
    va = build_tiny_vae(tmp_path / "va")
    vb = build_tiny_vae(tmp_path / "vb")
    elapsed = time.perf_counter() - t0
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (va / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (vb / "diffusion_pytorch_model.safetensors").read_bytes()
    assert elapsed < 8.0  # ~0.2 s on 2 CPU cores once transformers / diffusers are imported
    c = build_tiny_gemma(tmp_path / "c", seed=1)
    assert (c / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------------------ VAECodec


def test_vae_codec_attributes(codec):
    assert isinstance(codec, LatentCodec)
    assert isinstance(codec.vae, diffusers.AutoencoderKL)
    assert codec.scaling_factor == pytest.approx(0.13025) and codec.shift_factor == 0.0
    assert codec.latent_channels == 4 and codec.downscale == 2
    assert all(p.dtype == torch.float32 for p in codec.vae.parameters())
    assert codec.latent_shape(64, 32) == (4, 32, 16)
    with pytest.raises(ValueError, match="height"):
        codec.latent_shape(63, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_vae_decode(codec, dtype):
    latents = torch.randn(2, 4, 6, 5).to(dtype)
    images = codec.decode(latents)
    assert images.shape == (2, 3, 12, 10) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        ref = codec.vae.decode(latents.float() / 0.13025).sample
    ref = (ref / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, ref, rtol=0, atol=1e-6)
    assert not images.requires_grad


def test_vae_decode_uses_shift_factor():
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=16,
                                  layers_per_block=1, scaling_factor=1.5, shift_factor=0.25)
    codec = VAECodec(vae.to(torch.bfloat16))  # converted back to fp32
    assert codec.shift_factor == 0.25 and codec.scaling_factor == 1.5
    assert all(p.dtype == torch.float32 for p in codec.vae.parameters())
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        ref = ((vae.decode(z / 1.5 + 0.25).sample) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(codec.decode(z), ref, rtol=0, atol=1e-6)
    images = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        mode = vae.encode(images * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(codec.encode(images, sample=False), (mode - 0.25) * 1.5, rtol=0, atol=1e-6)


def test_vae_encode(codec):
    images = torch.rand(3, 3, 16, 12)
    z = codec.encode(images, generator=torch.Generator().manual_seed(1))
    assert z.shape == (3, 4, 8, 6) and z.dtype == torch.float32
    z2 = codec.encode(images, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z, z2, rtol=0, atol=0)
    z3 = codec.encode(images, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(z, z3)
    mode = codec.encode(images, sample=False)
    with torch.no_grad():
        ref = codec.vae.encode(images * 2 - 1).latent_dist.mode() * 0.13025
    torch.testing.assert_close(mode, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(codec.encode(images.to(torch.bfloat16), sample=False),
                               codec.encode(images.to(torch.bfloat16).float(), sample=False), rtol=0, atol=0)


def test_vae_codec_rejects_bad_shapes(codec):
    with pytest.raises(ValueError, match="channels"):
        codec.decode(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        codec.decode(torch.randn(4, 4, 4))


def test_vae_codec_to(codec):
    assert codec.to("cpu") is codec and codec.device == torch.device("cpu")


# ---------------------------------------------------------------------------------------------------- PixelCodec


def test_pixel_codec_round_trip():
    codec = PixelCodec()
    assert isinstance(codec, LatentCodec)
    assert codec.downscale == 1 and codec.latent_channels == 3
    grid = torch.arange(257, dtype=torch.float32) / 256  # dyadic values: every step is exact
    images = grid.repeat(2, 3, 1).reshape(2, 3, 257, 1)
    assert torch.equal(codec.decode(codec.encode(images)), images)
    assert torch.equal(codec.encode(images).min(), torch.tensor(-1.0))
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(codec.decode(codec.encode(x)), x, rtol=0, atol=1e-7)
    latents = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(codec.encode(codec.decode(latents)), latents, rtol=0, atol=1e-7)


def test_pixel_codec_clamps_and_channels():
    codec = PixelCodec(channels=1)
    out = codec.decode(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5).to(torch.bfloat16))
    assert out.dtype == torch.float32 and out.flatten().tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert codec.latent_shape(5, 7) == (1, 5, 7)
    assert codec.to("cpu") is codec
    with pytest.raises(ValueError, match="channels"):
        codec.decode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="channels"):
        PixelCodec(channels=0)


# -------------------------------------------------------------------------------------------------------- to_pil


def test_to_pil_sizes_mode_and_rounding():
    images = torch.zeros(2, 3, 5, 7)
    images[0, 0] = 0.5
    images[0, 1] = 1.0
    images[0, 2] = 0.2  # 51.0 exactly in float32 after *255 -> 51
    images[1] = 0.499 / 255  # rounds to 0
    images[1, :, 1, 0] = 100.6 / 255  # rounds to 101 (truncation would give 100)
    images[1, :, 0, 0] = 254.6 / 255  # rounds to 255 (truncation would give 254)
    images[1, :, 0, 1] = 2.0  # clamped
    images[1, :, 0, 2] = -1.0  # clamped
    images[1, :, 0, 3] = float("nan")  # -> 0
    pils = to_pil(images)
    assert len(pils) == 2
    for im in pils:
        assert im.size == (7, 5) and im.mode == "RGB"
    assert pils[0].getpixel((3, 2)) == (128, 255, 51)
    assert pils[1].getpixel((0, 0)) == (255, 255, 255)
    assert pils[1].getpixel((1, 0)) == (255, 255, 255)
    assert pils[1].getpixel((2, 0)) == (0, 0, 0)
    assert pils[1].getpixel((3, 0)) == (0, 0, 0)
    assert pils[1].getpixel((4, 4)) == (0, 0, 0)
    assert pils[1].getpixel((0, 1)) == (101, 101, 101)


def test_to_pil_grey_and_errors():
    grey = torch.full((1, 1, 4, 3), 0.25, dtype=torch.bfloat16)
    (im,) = to_pil(grey)
    assert im.mode == "RGB" and im.size == (3, 4) and im.getpixel((0, 0)) == (64, 64, 64)
    with pytest.raises(ValueError):
        to_pil(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError):
        to_pil(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError):
        to_pil(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_decode_to_pil_end_to_end(codec):
    pils = to_pil(codec.decode(torch.randn(1, 4, 8, 8)))
    assert pils[0].size == (16, 16) and pils[0].mode == "RGB"
