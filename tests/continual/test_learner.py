"""A whole strategy over a saved synthetic stream: result matrices, predictions, model, record."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from medfm.config import save_config
from medfm.continual.config import ContinualConfig, ExperienceConfig, ExperienceTrainConfig, StrategyConfig
from medfm.continual.learner import learn
from medfm.continual.stream import load_stream, save_stream

from .streams import separable_class_stream, task_stream


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    save_stream(task_stream(), folder)
    strategies = [
        StrategyConfig(name) for name in ("naive", "joint", "specialised", "replay", "ewc", "lwf", "der")
    ]
    config = ContinualConfig(
        experiences=[ExperienceConfig(task="synthetic", name=f"e{i}") for i in range(3)],
        strategies=strategies,
        train=ExperienceTrainConfig(epochs=1, batch_size=16, lr=1e-3),
        signal_patch=50,
    )
    save_config(config, folder / "config.yaml")
    return folder


def test_a_saved_stream_loads_back_identically(tmp_path):
    stream = task_stream()
    save_stream(stream, tmp_path)
    again = load_stream(tmp_path)
    assert again.names == stream.names and again.heads == stream.heads and again.trunk == stream.trunk
    for a, b in zip(stream.experiences, again.experiences):
        for split in ("train", "val", "test"):
            assert all(
                (a.splits[split].inputs[k] == b.splits[split].inputs[k]).all() for k in a.splits[split].inputs
            )
            assert (a.splits[split].subjects == b.splits[split].subjects).all()


@pytest.mark.parametrize("index", range(7))
def test_every_strategy_fills_the_matrix_it_promises(saved, tmp_path, index):
    result = learn(str(saved / "config.yaml"), index, str(saved), str(tmp_path), key="k")
    matrix = np.array(result["R"]["test"], dtype=float)
    assert matrix.shape == (3, 3)
    if result["strategy"] == "joint":
        assert np.isnan(matrix[:2]).all() and np.isfinite(matrix[2]).all()
        assert result["steps"][:2] == [0, 0] and result["steps"][2] == 9  # 144 examples / 16
    else:
        assert np.isfinite(matrix).all() and result["steps"] == [3, 3, 3]
    assert np.isfinite(result["initial"]["test"]).all()
    written = json.loads((tmp_path / "result.json").read_text())
    assert written["key"] == "k"
    np.testing.assert_array_equal(np.array(written["R"]["test"], dtype=float), matrix)
    predictions = np.load(tmp_path / "predictions.npz")
    assert {"initial/0", "2/1"} <= set(predictions.files) and predictions["2/1"].shape == (24, 3)
    assert any(k.startswith("trunk.") for k in load_file(tmp_path / "model.safetensors"))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(line).get("experience") for line in lines} >= {"e2-series"}
    if result["strategy"] in ("replay", "der", "ewc", "lwf", "specialised"):
        assert result["memory_bytes"][-1] > 0


def test_the_same_settings_give_the_same_numbers(saved, tmp_path):
    first = learn(str(saved / "config.yaml"), 3, str(saved), str(tmp_path / "a"))
    second = learn(str(saved / "config.yaml"), 3, str(saved), str(tmp_path / "b"))
    assert first["R"] == second["R"]


def test_replay_keeps_earlier_classes_that_naive_fine_tuning_forgets(tmp_path):
    save_stream(separable_class_stream(), tmp_path / "stream")
    config = ContinualConfig(
        scenario="class",
        experiences=[ExperienceConfig(task="synthetic", name=n, classes=[n]) for n in ("ab", "cd")],
        strategies=[StrategyConfig("naive"), StrategyConfig("replay")],
        train=ExperienceTrainConfig(epochs=8, batch_size=16, lr=3e-3),
        metric="accuracy",
    )
    config.strategies[1].replay.examples = 16
    save_config(config, tmp_path / "config.yaml")
    naive = learn(str(tmp_path / "config.yaml"), 0, str(tmp_path / "stream"), str(tmp_path / "naive"))
    replay = learn(str(tmp_path / "config.yaml"), 1, str(tmp_path / "stream"), str(tmp_path / "replay"))
    naive_R, replay_R = np.array(naive["R"]["test"]), np.array(replay["R"]["test"])
    assert naive_R[0, 0] > 0.9 and replay_R[0, 0] > 0.9  # the first classes were learnt
    assert naive_R[1, 0] < 0.2  # then forgotten: the head now answers c or d
    assert replay_R[1, 0] > 0.6 and replay_R[1, 1] > 0.8
