import torch

from medfm.continual.model import ContinualModel, SeriesTokens, SignalTokens, build_model, task_loss

from .streams import class_stream, task_stream


def test_each_modality_reaches_the_shared_trunk():
    model = build_model(task_stream(), 50, seed=0)
    assert set(model.tokenizers) == {"signal_1x200", "series_6x4"} and len(model.heads) == 3
    features = {
        "image": model.features({"image": torch.randn(3, 1, 32, 32)}),
        "signal": model.features({"signal": torch.randn(3, 1, 200)}),
        "series": model.features({"series": torch.randn(3, 6, 4)}),
    }
    assert all(f.shape == (3, model.trunk.embed_dim) for f in features.values())
    assert isinstance(model.tokenizers["signal_1x200"], SignalTokens)
    assert isinstance(model.tokenizers["series_6x4"], SeriesTokens)
    # the signal's tokens: 200 samples in patches of 50, behind the class token
    assert model.tokens({"signal": torch.randn(2, 1, 200)}).shape == (2, 5, model.trunk.embed_dim)


def test_a_mixed_batch_gives_the_mean_loss_over_every_example():
    model = build_model(task_stream(), 50, seed=0).eval()
    image = {
        "experience": 0,
        "head": "e0-image",
        "inputs": {"image": torch.randn(4, 1, 32, 32)},
        "y": torch.tensor([0, 1, 0, 1]),
    }
    signal = {
        "experience": 1,
        "head": "e1-signal",
        "inputs": {"signal": torch.randn(2, 1, 200)},
        "y": torch.tensor([2, 0]),
    }
    out = model({"parts": [image, signal]})
    by_part = [task_loss(model.logits(p["inputs"], p["head"]), p["y"], False, "sum") for p in (image, signal)]
    assert torch.allclose(out["loss"], sum(by_part) / 6, atol=1e-6)
    assert [tuple(x.shape) for x in out["logits"]] == [(4, 2), (2, 3)]
    weighted = model({"parts": [image, {**signal, "weight": 0.0}]})
    assert torch.allclose(weighted["loss"], by_part[0] / 6, atol=1e-6)


def test_class_incremental_streams_have_one_head_over_every_class():
    model = build_model(class_stream(), 50, seed=0)
    assert list(model.heads) == ["shared"] and model.heads["shared"].out_features == 4


def test_the_same_seed_builds_the_same_model():
    a, b = build_model(task_stream(), 50, seed=3), build_model(task_stream(), 50, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_multilabel_heads_use_independent_sigmoids():
    logits = torch.tensor([[10.0, -10.0]])
    assert task_loss(logits, torch.tensor([[1.0, 0.0]]), True) < 1e-3
    assert task_loss(logits, torch.tensor([[0.0, 1.0]]), True) > 5
    assert isinstance(ContinualModel, type)


def test_series_of_different_widths_get_tokenizers_of_their_own():
    from medfm.continual.stream import Head, Stream

    from .streams import TRUNK, experience

    wide = experience(1, "series", "wide", ("f", "g"))
    for split in wide.splits.values():
        split.inputs["series"] = torch.randn(len(split), 6, 9)
    narrow = experience(0, "series", "narrow", ("f", "g"))
    heads = {"narrow": Head("narrow", ("f", "g"), False), "wide": Head("wide", ("f", "g"), False)}
    model = build_model(Stream("task", [narrow, wide], heads, TRUNK), 50, seed=0)
    assert set(model.tokenizers) == {"series_6x4", "series_6x9"}
    assert model.logits({"series": torch.randn(2, 6, 9)}, "wide").shape == (2, 2)
    assert model.logits({"series": torch.randn(2, 6, 4)}, "narrow").shape == (2, 2)
