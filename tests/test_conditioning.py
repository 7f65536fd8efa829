"""lumina.conditioning: several text encoders projected and concatenated along tokens, class labels with a null
class feeding a model's cross-attention, and the compatibility re-exports."""
import pytest
import torch

from lumina.conditioning import ClassLabels, MultiTextEncoder, TextEncoder
from lumina.models import NextDiT, NextDiTConfig
from lumina.pipelines.tiny import build_tiny_gemma


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    a = TextEncoder.from_pretrained(build_tiny_gemma(root / "a", hidden_size=32, seed=0), max_length=16)
    b = TextEncoder.from_pretrained(build_tiny_gemma(root / "b", hidden_size=16, seed=1), max_length=24)
    return a, b


def test_reexports():
    import lumina.pipelines as pipelines
    import lumina.conditioning as conditioning

    assert pipelines.TextEncoder is conditioning.TextEncoder is TextEncoder


def test_multi_encoder_projects_and_concatenates(encoders):
    a, b = encoders
    multi = MultiTextEncoder([a, b], dim=32)
    assert isinstance(multi.projections[0], torch.nn.Identity) and multi.projections[1].in_features == 16
    prompts = ["a red circle", "x"]
    feats, mask = multi.encode(prompts)
    fa, ma = a.encode(prompts)
    fb, mb = b.encode(prompts)
    assert feats.shape == (2, fa.shape[1] + fb.shape[1], 32)
    assert torch.equal(mask, torch.cat([ma, mb], dim=1))
    assert torch.equal(feats[:, : fa.shape[1]], fa)  # the identity projection
    torch.testing.assert_close(feats[:, fa.shape[1]:], multi.projections[1](fb))
    # one list of prompts per encoder (audio: caption to CLAP, structured caption to T5)
    f2, m2 = multi.encode([["a red circle", "x"], ["shape: circle", "y"]])
    assert torch.equal(f2[:, : fa.shape[1]], fa) and f2.shape[0] == 2
    # the projections are learnable
    (f2 ** 2).mean().backward()
    assert multi.projections[1].weight.grad is not None
    assert all(p.grad is None for p in a.parameters())
    always = MultiTextEncoder([a, b], dim=32, project="always")
    assert all(isinstance(p, torch.nn.Linear) for p in always.projections)


@pytest.mark.parametrize("args,match", [
    (([], 8), "`encoders`"), ((None, 0), "`encoders`"),
])
def test_multi_encoder_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        MultiTextEncoder(*args)


def test_multi_encoder_bad_prompts(encoders):
    multi = MultiTextEncoder(list(encoders), dim=32)
    with pytest.raises(ValueError, match="`dim`"):
        MultiTextEncoder(list(encoders), dim=0)
    with pytest.raises(ValueError, match="one list of strings per encoder"):
        multi.encode([["a"], ["b"], ["c"]])
    with pytest.raises(ValueError, match="the same batch"):
        multi.encode([["a"], ["b", "c"]])


def test_class_labels_as_context():
    labels = ClassLabels(n_classes=5, dim=16)
    feats, mask = labels.encode(torch.tensor([0, 4, 5]))
    assert feats.shape == (3, 1, 16) and mask.all() and mask.shape == (3, 1)
    assert torch.equal(feats[2, 0], labels.embedding.weight[labels.null_class])
    assert torch.equal(labels.null(2), torch.tensor([5, 5]))
    g = torch.Generator().manual_seed(0)
    dropped, _ = labels.encode(torch.zeros(200, dtype=torch.long), drop=0.5, generator=g)
    n_null = (dropped[:, 0] == labels.embedding.weight[5]).all(-1).sum().item()
    assert 60 < n_null < 140
    assert torch.equal(labels.encode(torch.arange(5), drop=1.0)[0], labels.encode(labels.null(5))[0])
    # a class-conditional model: the label token is its context
    model = NextDiT(NextDiTConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, context_dim=16, in_channels=3,
                                  multiple_of=16, sample_size=8))
    out = model(torch.randn(3, 3, 4, 4), torch.rand(3), feats, mask)
    assert out.shape == (3, 3, 4, 4)
    for bad, match in ((torch.tensor([6]), r"\[0, 5\]"), (torch.tensor([[1]]), r"\(B,\) integer"),
                       (torch.tensor([1.0]), "integer")):
        with pytest.raises(ValueError, match=match):
            labels.encode(bad)
    with pytest.raises(ValueError, match="`drop`"):
        labels.encode(torch.tensor([1]), drop=1.5)
    with pytest.raises(ValueError, match="`n_classes`"):
        ClassLabels(0, 4)


def test_vocabulary_records_few_words_and_names_unknown_ones():
    import warnings

    from lumina.conditioning.vocabulary import (UnknownWordsWarning, caption_vocabulary, unknown_words,
                                                warn_unknown, words)

    assert words("Top-left: a Red circle!") == ["top", "left", "a", "red", "circle"]
    vocab = caption_vocabulary(["a red circle", "top left: a blue square on green"])
    assert vocab == ["a", "blue", "circle", "green", "left", "on", "red", "square", "top"]
    assert caption_vocabulary(("".join(chr(97 + (i // 26 ** k) % 26) for k in range(3)) for i in range(600)),
                              limit=512) is None  # an open vocabulary: nothing recorded
    assert unknown_words(["a pink hexagon", "a PINK circle, violet"], vocab) == ["pink", "hexagon", "violet"]
    with pytest.warns(UnknownWordsWarning, match=r"'pink', 'hexagon'"):
        assert warn_unknown(["a pink hexagon"], vocab) == ["pink", "hexagon"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_unknown(["a red circle"], vocab) == [] and warn_unknown(["anything at all"], None) == []
