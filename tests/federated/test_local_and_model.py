"""The clients' training loop (FedProx's pull included), the federated model and the arrays it exchanges,
and the privacy accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfm.errors import ConfigError
from medfm.evaluate.inputs import Split, question_tokens
from medfm.federated.config import FederateConfig, LocalTrainingConfig, PrivacyConfig
from medfm.federated.local import scores, train_task
from medfm.federated.model import build_model, exchanged, load_arrays, task_keys, to_arrays
from medfm.federated.privacy import privacy_spent

SERIES = {"model": {"kind": "series", "encoder": "icu_gru", "in_features": 3}}
SIGNAL = {"model": {"kind": "signal", "encoder": "ecg_cnn", "in_chans": 1}}
IMAGE = {
    "model": {"kind": "vqa", "encoder": "test_vit", "in_chans": 1, "image_size": 32, "mean": 0.5, "std": 0.25}
}


def separable(n: int = 96, seed: int = 0) -> Split:
    """ICU-like series whose first variable's level gives the label."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 8, 6, generator=generator)
    x[:, :, 0] += 2.0 * (2 * y[:, None] - 1)
    return Split({"series": x}, y, np.array([f"s{i}" for i in range(n)]))


def test_local_training_learns_a_separable_task():
    model = build_model({"icu": SERIES})["icu"]
    data = separable()
    before = scores(model, data)["loss"]
    result = train_task(model, data, LocalTrainingConfig(batch_size=16, lr=3e-3), epochs=5, seed=0)
    after = scores(model, data)
    assert result["steps"] == 30 and after["loss"] < before and after["auroc"] > 0.95


def test_fedprox_keeps_local_weights_near_the_global_ones():
    config = LocalTrainingConfig(batch_size=16, lr=3e-3)
    drift = {}
    for mu in (0.0, 10.0):
        model = build_model({"icu": SERIES})["icu"]
        start = [p.detach().clone() for p in model.parameters()]
        train_task(model, separable(), config, epochs=3, seed=0, proximal_mu=mu)
        drift[mu] = sum(float(((p.detach() - s) ** 2).sum()) for p, s in zip(model.parameters(), start))
    assert drift[10.0] < 0.5 * drift[0.0]


def test_models_are_identical_on_every_holder_and_exchange_only_floats():
    tasks = {"icu": SERIES, "ecg": SIGNAL, "vqa": IMAGE}
    a, b = build_model(tasks, seed=3), build_model(tasks, seed=3)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    sent = exchanged(a)
    assert not any(k.endswith("num_batches_tracked") for k in sent)  # BatchNorm counters stay home
    assert set(task_keys(a)) == {"icu", "ecg", "vqa"}
    assert sum(len(v) for v in task_keys(a).values()) == len(sent)
    other = build_model(tasks, seed=4)
    load_arrays(other, to_arrays(a))
    for key in sent:
        assert torch.equal(exchanged(other)[key], sent[key])
    partial = to_arrays(a)
    del partial[next(iter(partial))]
    with pytest.raises(ConfigError, match="lack 1 tensor"):
        load_arrays(other, partial)


def test_vqa_model_reads_image_and_hashed_question():
    model = build_model({"vqa": IMAGE})["vqa"]
    tokens = question_tokens("Is there a  PNEUMOTHORAX?")
    assert tokens == question_tokens("is there a pneumothorax?") and len(tokens) == 32 and 0 in tokens
    batch = {"image": torch.randn(2, 1, 32, 32), "question": torch.tensor([tokens, question_tokens("no")])}
    assert model(batch).shape == (2, 2)


def test_privacy_spent_is_flowers_rdp_epsilon_over_the_releases_made():
    assert privacy_spent(FederateConfig(), releases=5) == {}
    private = FederateConfig(
        clients=5, rounds=5, privacy=PrivacyConfig(dp="client_fixed", noise_multiplier=1.0)
    )
    spent = privacy_spent(private, releases=5)
    # One Gaussian release per aggregated round, z = 1, 5 releases, delta = 1e-5, no sampling amplification.
    assert spent["epsilon"] == pytest.approx(12.302, abs=1e-3) and spent["delta"] == 1e-5
    assert spent["released_rounds"] == 5
    assert privacy_spent(private, releases=4)["epsilon"] < spent["epsilon"]
    assert privacy_spent(private, releases=0)["epsilon"] == 0.0
    more_noise = FederateConfig(
        clients=5, rounds=5, privacy=PrivacyConfig(dp="client_fixed", noise_multiplier=2.0)
    )
    assert privacy_spent(more_noise, releases=5)["epsilon"] < spent["epsilon"]


def test_building_and_training_leave_the_callers_generator_alone():
    def next_draw_after(work) -> torch.Tensor:
        torch.manual_seed(1234)
        work()
        return torch.rand(4)

    untouched = next_draw_after(lambda: None)
    model = build_model({"icu": SERIES})["icu"]
    config = LocalTrainingConfig(batch_size=16)
    assert torch.equal(next_draw_after(lambda: build_model({"icu": SERIES})), untouched)
    assert torch.equal(
        next_draw_after(lambda: train_task(model, separable(), config, epochs=1, seed=0)), untouched
    )
