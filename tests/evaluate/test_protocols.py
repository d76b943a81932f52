"""Protocols on data whose answer is known: separable features, clusters, a tiny image task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medfm.evaluate.backbones import ImageBackbone
from medfm.evaluate.protocols.fewshot import FewShotConfig, draw_shots, few_shot
from medfm.evaluate.protocols.finetune import Classifier, FinetuneConfig, finetune, layer_decay_groups
from medfm.evaluate.protocols.knn import KnnConfig, knn_predict
from medfm.evaluate.protocols.linear_probe import LinearProbeConfig, fit_probe, linear_probe
from medfm.models.encoders import create_encoder


def separable(n: int, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, dim)).astype(np.float32) * 3 + 50  # far from zero-mean, unit-scale
    x[:, :3] += 6 * np.eye(3)[y]
    return x, y


def test_linear_probe_is_batchnorm_without_affine_then_linear():
    x, y = separable(300)
    model = fit_probe(x, y, 3, False, l2=1e-3)
    norm, linear = model
    assert isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine
    assert np.allclose(norm.running_mean.numpy(), x.mean(0), atol=1e-4)  # exactly the training statistics
    assert linear.out_features == 3


def test_linear_probe_learns_and_chooses_a_penalty_on_validation():
    x, y = separable(900)
    prob, fit = linear_probe(
        (x[:600], y[:600]), (x[600:700], y[600:700]), x[700:], 3, False, LinearProbeConfig()
    )
    assert roc_auc_score(y[700:], prob, multi_class="ovr") > 0.95
    assert np.allclose(prob.sum(1), 1, atol=1e-5)
    assert fit["l2"] in LinearProbeConfig().l2 and np.isfinite(fit["val_loss"])


def test_linear_probe_multilabel_gives_independent_probabilities():
    x, y = separable(400)
    multi = np.stack([y == 0, y == 1], 1).astype(np.float32)
    prob, _ = linear_probe((x[:300], multi[:300]), (x[:0], multi[:0]), x[300:], 2, True, LinearProbeConfig())
    assert prob.shape == (100, 2) and roc_auc_score(multi[300:, 0], prob[:, 0]) > 0.95


def test_knn_votes_with_the_nearest_neighbours():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    prob = knn_predict(
        train, np.array([0, 0, 1, 1]), np.array([[1, 0.05], [0.05, 1]]), 2, False, KnnConfig(k=2)
    )
    assert prob.argmax(1).tolist() == [0, 1] and np.allclose(prob.sum(1), 1)
    assert prob[0, 0] == pytest.approx(1.0)


def test_few_shot_draws_k_per_class_and_repeats_deterministically():
    y = np.array([0] * 50 + [1] * 30 + [2] * 3)
    index = draw_shots(y, 5, False, np.random.default_rng(0))
    assert np.bincount(y[index]).tolist() == [5, 5, 3]  # a class with fewer examples gives all it has
    x, y = separable(300)
    config = FewShotConfig(shots=[1, 5], draws=3)
    first = list(few_shot(x[:200], y[:200], x[200:], 3, False, config))
    second = list(few_shot(x[:200], y[:200], x[200:], 3, False, config))
    assert [(k, d) for k, d, _ in first] == [(1, 0), (1, 1), (1, 2), (5, 0), (5, 1), (5, 2)]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(first, second))
    assert not np.array_equal(first[0][2], first[1][2])  # draws differ


def test_layer_decay_scales_the_learning_rate_from_the_head_down():
    model = Classifier(ImageBackbone(create_encoder("test_vit"), 32), 2)
    groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=0.5)
    scales = {}
    for group in groups:
        for param in group["params"]:
            scales[param] = group["lr_scale"]
    assert scales[model.head.weight] == 1.0
    assert scales[model.backbone.encoder.blocks[1].mlp.fc1.weight] == 0.5**1
    assert scales[model.backbone.encoder.patch_embed.proj.weight] == 0.5**3
    no_decay = [g for g in groups if g["weight_decay"] == 0]
    assert any(model.backbone.encoder.cls_token is p for g in no_decay for p in g["params"])


def test_finetune_learns_a_brightness_task():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 96)
    images = [np.clip(rng.normal(60 + 120 * c, 20, (1, 32, 32)), 0, 255).astype(np.uint8) for c in y]
    inputs = {"image": images}

    def part(s):
        return {"image": images[s]}, y[s]

    backbone = ImageBackbone(create_encoder("test_vit"), 32)
    prob, fit = finetune(
        backbone,
        part(slice(0, 64)),
        part(slice(64, 80)),
        {"image": images[80:]},
        2,
        False,
        FinetuneConfig(epochs=8, batch_size=16, lr=3e-3),
    )
    assert prob.shape == (16, 2) and fit["steps"] == 32
    assert (prob.argmax(1) == y[80:]).mean() >= 0.9
    assert len(inputs["image"]) == 96  # the caller's inputs are not modified
    assert not any(p.grad is not None for p in backbone.parameters())  # the given backbone is not trained


def test_protocols_leave_the_callers_random_generator_alone():
    x, y = separable(120)
    images = [np.full((1, 32, 32), 100 * (c % 2), np.uint8) for c in y[:24]]
    backbone = ImageBackbone(create_encoder("test_vit"), 32)

    def next_draw_after(work) -> torch.Tensor:
        torch.manual_seed(1234)
        work()
        return torch.rand(4)

    untouched = next_draw_after(lambda: None)
    probe = next_draw_after(lambda: linear_probe((x, y), (x[:0], y[:0]), x, 3, False, LinearProbeConfig()))
    tuned = next_draw_after(
        lambda: finetune(
            backbone,
            ({"image": images}, y[:24] % 2),
            ({"image": []}, y[:0]),
            {"image": images[:4]},
            2,
            False,
            FinetuneConfig(epochs=1, batch_size=8),
            seed=7,
        )
    )
    assert torch.equal(probe, untouched) and torch.equal(tuned, untouched)
