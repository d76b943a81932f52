"""Each strategy's plugin behaviour on small synthetic streams (inputs of every modality)."""

import copy

import numpy as np
import pytest
import torch

from medfm.continual.config import StrategyConfig
from medfm.continual.learner import StreamData
from medfm.continual.model import build_model
from medfm.continual.strategies import (
    STRATEGIES,
    EWCPenalty,
    diagonal_fisher,
    make_buffer,
    offer_experience,
    steps_for,
)

from .streams import class_stream, task_stream


def strategy(name: str, stream, **options):
    config = StrategyConfig(name, **options)
    return STRATEGIES.get(name)(config, stream, 0, 16)


class FakeTrainer:
    def __init__(self, model):
        self.model, self.device = model, torch.device("cpu")


def test_collate_keeps_one_part_per_experience():
    stream = task_stream()
    data = StreamData(stream, [0, 1, 2])
    batch = data.collate([data[(i, 0)] for i in (0, 50, 100, 1, 60)])
    assert [p["experience"] for p in batch["parts"]] == [0, 1, 2]
    assert [len(p["y"]) for p in batch["parts"]] == [2, 2, 1]
    assert batch["parts"][1]["inputs"]["signal"].shape == (2, 1, 200)


def test_replay_memory_holds_five_percent_and_adds_remembered_parts():
    stream = task_stream()
    replay = strategy("replay", stream)
    model = build_model(stream, 50, 0)
    replay.start(model)
    assert replay.buffer.budget.examples == round(0.05 * stream.train_examples)  # 7 of 144
    replay.after_experience(0, model)
    replay.after_experience(1, model)
    [hook] = replay.hooks(2, model)
    current = StreamData(stream, [2]).collate([(2, 0), (2, 1)])
    batch = hook.on_batch(FakeTrainer(model), current)
    remembered = batch["parts"][1:]
    assert {p["experience"] for p in remembered} <= {0, 1} and sum(len(p["y"]) for p in remembered) == 7
    for part in remembered:  # each remembered part trains its own experience's head
        assert part["head"] == stream.experiences[part["experience"]].head
    assert replay.memory_bytes() == replay.buffer.nbytes > 0


def test_a_byte_budget_caps_the_memory():
    stream = task_stream()
    config = StrategyConfig("replay")
    config.replay.bytes = "10KB"
    buffer = make_buffer(config, stream, 0)
    offer_experience(buffer, stream.experiences[0], 0)  # images: 4 KiB each
    assert buffer.nbytes <= 10_000 and len(buffer) == 2


def test_joint_trains_once_on_everything_and_scores_only_at_the_end():
    joint = strategy("joint", task_stream())
    assert [joint.training_data(i) for i in range(3)] == [[], [], [0, 1, 2]]
    model = object()
    assert joint.scorer(1, 0, model) is None and joint.scorer(2, 0, model) is model


def test_specialised_starts_each_experience_from_the_pretrained_model():
    stream = task_stream()
    specialised = strategy("specialised", stream)
    model = build_model(stream, 50, 0)
    specialised.start(model)
    first = specialised.model_for(0, model)
    with torch.no_grad():
        first.heads["e0-image"].weight.add_(1.0)
    specialised.after_experience(0, first)
    second = specialised.model_for(1, first)
    assert torch.equal(second.heads["e0-image"].weight, model.heads["e0-image"].weight)
    specialised.after_experience(1, second)
    assert specialised.scorer(1, 0, second) is first and specialised.scorer(1, 1, second) is second
    assert specialised.scorer(1, 2, second) is second


def test_ewc_fisher_covers_what_the_experience_trains_and_the_penalty_pulls_back():
    stream = task_stream()
    model = build_model(stream, 50, 0)
    fisher = diagonal_fisher(model, stream.experiences[0], 32, 8, seed=0)
    assert any(name.startswith("trunk.blocks") for name in fisher)
    assert not any(name.startswith(("heads.e1", "tokenizers.")) for name in fisher)  # untouched by images
    anchor = {name: p.detach().clone() for name, p in model.named_parameters() if name in fisher}
    hook = EWCPenalty(model, [(fisher, anchor)], strength=10.0)
    outputs = {"loss": torch.zeros(())}
    assert hook.on_outputs(None, {}, outputs)["ewc_penalty"] == 0
    with torch.no_grad():
        model.trunk.blocks[0].mlp.fc1.weight.add_(0.1)
    assert hook.on_outputs(None, {}, outputs)["ewc_penalty"] > 0


def test_lwf_distils_earlier_heads_and_is_silent_when_nothing_changed():
    stream = task_stream()
    model = build_model(stream, 50, 0)
    lwf = strategy("lwf", stream)
    lwf.start(model)
    assert lwf.hooks(0, model) == []
    [hook] = lwf.hooks(2, model)
    assert hook.targets == {"e0-image": 2, "e1-signal": 3}
    model.eval()
    batch = StreamData(stream, [2]).collate([(2, i) for i in range(4)])
    outputs = model(batch)
    assert hook.on_outputs(FakeTrainer(model), batch, outputs)["lwf_loss"] == pytest.approx(0, abs=1e-6)
    with torch.no_grad():
        model.heads["e0-image"].bias.add_(torch.tensor([2.0, -2.0]))
    assert hook.on_outputs(FakeTrainer(model), batch, model(batch))["lwf_loss"] > 0.01


def test_lwf_on_a_shared_head_distils_the_classes_seen_so_far():
    stream = class_stream()
    lwf = strategy("lwf", stream)
    model = build_model(stream, 50, 0)
    lwf.start(model)
    [hook] = lwf.hooks(1, model)
    assert hook.targets == {"shared": 2}


def test_der_stores_logits_and_matches_them():
    stream = task_stream()
    der = strategy("der", stream)
    model = build_model(stream, 50, 0).eval()
    der.start(model)
    der.after_experience(0, model)
    replay, matching = der.hooks(1, model)
    batch = replay.on_batch(FakeTrainer(model), StreamData(stream, [1]).collate([(1, 0), (1, 1)]))
    remembered = batch["parts"][1]
    assert remembered["weight"] == der.config.der.beta and remembered["stored_logits"].shape[1] == 2
    outputs = model(batch)
    assert matching.on_outputs(None, batch, outputs)["der_loss"] == pytest.approx(0, abs=1e-8)


def test_steps_follow_epochs_and_the_cap():
    assert (
        steps_for(100, 32, 1.0, 0) == 4 and steps_for(100, 32, 2.0, 5) == 5 and steps_for(3, 32, 0.1, 0) == 1
    )


def test_strategy_memory_is_counted():
    stream = task_stream()
    model = build_model(stream, 50, 0)
    ewc = strategy("ewc", stream)
    ewc.start(model)
    ewc.after_experience(0, copy.deepcopy(model))
    assert ewc.memory_bytes() > 0
    assert np.isfinite(ewc.memory_bytes())
