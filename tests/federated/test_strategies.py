"""The server's guard and Flower's strategies on hand-made client replies: bad updates rejected with a log
line, per-task aggregation, robust strategies against one poisoning client, and private rounds refused when a
sampled client's update is missing."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp
from flwr.serverapp import NeighboringRelation, RdpAccountant, SamplingMethod
from flwr.serverapp import PrivacyConfig as AccountingConfig
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from medfm.federated.config import StrategyConfig
from medfm.federated.runtime import InProcessGrid
from medfm.federated.strategies import GuardedStrategy, build_strategy, update_problem

SHAPES = {"a.w": (3, 2), "a.b": (2,), "b.w": (4,)}
TASK_KEYS = {"a": ["a.w", "a.b"], "b": ["b.w"]}


def arrays_of(value: float | dict[str, np.ndarray]) -> ArrayRecord:
    if isinstance(value, dict):
        return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in value.items()})
    return ArrayRecord({k: Array(np.full(s, value, dtype=np.float32)) for k, s in SHAPES.items()})


def reply(node: int, arrays: ArrayRecord, examples: dict[str, int]) -> Message:
    metrics = {"num-examples": sum(examples.values()), "partition-id": node - 1}
    metrics.update({f"num-examples/{t}": examples.get(t, 0) for t in TASK_KEYS})
    metadata = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"q{node}",
        group_id="1",
        created_at=time.time(),
        ttl=60,
        message_type="train",
    )
    return Message(
        metadata=metadata, content=RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    )


def sent_to(node: int) -> Message:
    """The train message the server sent to ``node`` (as the grid leaves it: id stamped)."""
    metadata = Metadata(
        run_id=1,
        message_id=f"q{node}",
        src_node_id=0,
        dst_node_id=node,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=60,
        message_type="train",
    )
    return Message(metadata=metadata, content=RecordDict())


def guard(name: str = "fedavg", **settings) -> GuardedStrategy:
    config = StrategyConfig(name, **settings)
    strategy = GuardedStrategy(lambda: build_strategy(config, min_clients=2, fraction_train=1.0), TASK_KEYS)
    strategy.current = arrays_of(0.0)
    strategy.shapes = dict(SHAPES)
    return strategy


def test_update_problem_names_each_defect():
    good = reply(1, arrays_of(1.0), {"a": 5}).content
    assert update_problem(good, SHAPES) is None
    nan = arrays_of({**{k: np.ones(s) for k, s in SHAPES.items()}, "a.b": [np.nan, 1.0]})
    assert "a.b holds NaN or Inf" in update_problem(reply(1, nan, {"a": 5}).content, SHAPES)
    inf = arrays_of({**{k: np.zeros(s) for k, s in SHAPES.items()}, "b.w": [0, np.inf, 0, 0]})
    assert "b.w holds NaN or Inf" in update_problem(reply(1, inf, {"a": 5}).content, SHAPES)
    wide = arrays_of({**{k: np.zeros(s) for k, s in SHAPES.items()}, "a.w": np.zeros((3, 3))})
    assert "a.w has shape (3, 3), the model's is (3, 2)" in update_problem(
        reply(1, wide, {"a": 5}).content, SHAPES
    )
    missing = arrays_of({"a.w": np.zeros((3, 2)), "a.b": np.zeros(2)})
    assert "missing ['b.w']" in update_problem(reply(1, missing, {"a": 5}).content, SHAPES)
    assert "not a positive count" in update_problem(reply(1, arrays_of(1.0), {}).content, SHAPES)


def test_bad_updates_are_rejected_with_a_log_line_and_the_round_goes_on(caplog):
    strategy = guard()
    strategy.sent = [sent_to(node) for node in (1, 2, 3, 4)]
    nan = arrays_of({**{k: np.ones(s) for k, s in SHAPES.items()}, "a.w": np.full((3, 2), np.nan)})
    wrong = arrays_of({**{k: np.zeros(s) for k, s in SHAPES.items()}, "b.w": np.zeros(5)})
    replies = [
        reply(1, arrays_of(1.0), {"a": 10, "b": 10}),
        reply(2, nan, {"a": 10, "b": 10}),
        reply(3, wrong, {"a": 10, "b": 10}),
    ]  # node 4 never answers
    with caplog.at_level(logging.WARNING, logger="medfm"):
        arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    for key in SHAPES:  # only node 1's update is left
        np.testing.assert_allclose(arrays[key].numpy(), 1.0)
    text = caplog.text
    assert "rejected the update of client 1 (node 2): tensor a.w holds NaN or Inf" in text
    assert "rejected the update of client 2 (node 3): tensor b.w has shape (5,)" in text
    assert "node 4 sent no update" in text
    assert [(e["event"], e["node"]) for e in strategy.events] == [
        ("no reply", 4),
        ("rejected", 2),
        ("rejected", 3),
    ]


def test_a_round_with_only_bad_updates_keeps_the_global_model(caplog):
    strategy = guard()
    nan = arrays_of(float("nan"))
    with caplog.at_level(logging.WARNING, logger="medfm"):
        assert strategy.aggregate_train(1, [reply(1, nan, {"a": 1})]) == (None, None)
    assert "the global model stays as it was" in caplog.text


def test_each_task_is_averaged_over_the_clients_that_trained_it():
    strategy = guard()
    replies = [
        reply(1, arrays_of(1.0), {"a": 30}),  # holds task a only: its b.w is the old global value 0
        reply(2, arrays_of(4.0), {"a": 10, "b": 5}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["a.w"].numpy(), (30 * 1.0 + 10 * 4.0) / 40)
    np.testing.assert_allclose(arrays["b.w"].numpy(), 4.0)  # not pulled back towards 0 by client 1
    assert list(arrays.keys()) == list(SHAPES)


def poisoned_round(name: str, **settings) -> float:
    """Distance of the aggregate from the honest clients' consensus when one client sends a huge update."""
    rng = np.random.default_rng(0)
    truth = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    honest = [
        reply(
            i + 1,
            arrays_of({k: v + 0.01 * rng.normal(size=v.shape) for k, v in truth.items()}),
            {"a": 20, "b": 20},
        )
        for i in range(5)
    ]
    poison = reply(6, arrays_of({k: 1e3 * rng.normal(size=s) for k, s in SHAPES.items()}), {"a": 20, "b": 20})
    strategy = guard(name, **settings)
    arrays, _ = strategy.aggregate_train(1, [*honest, poison])
    return max(float(np.abs(arrays[k].numpy() - truth[k]).max()) for k in SHAPES)


def test_plain_fedavg_is_dragged_away_by_one_poisoning_client():
    assert poisoned_round("fedavg") > 50


@pytest.mark.parametrize(
    ("name", "settings"),
    [("fedmedian", {}), ("krum", {"byzantine": 1}), ("trimmed_mean", {"trim_beta": 0.2})],
)
def test_robust_strategies_ignore_one_poisoning_client(name, settings):
    assert poisoned_round(name, **settings) < 0.1


@pytest.mark.parametrize(
    "name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "krum", "trimmed_mean"]
)
def test_every_named_strategy_is_built_from_flower(name):
    strategy = build_strategy(StrategyConfig(name), min_clients=3, fraction_train=0.6)
    assert type(strategy).__module__.startswith("flwr.serverapp.strategy")
    assert strategy.min_train_nodes == 3 and strategy.fraction_train == 0.6


def test_the_superlinks_error_reply_about_a_dead_node_is_charged_to_that_node(caplog):
    from flwr.app import Error

    strategy = guard()
    strategy.sent = [sent_to(node) for node in (1, 2, 3)]
    # The SuperLink (node 1 here, as in a deployment) answers for node 3, which stopped sending heartbeats.
    metadata = Metadata(
        run_id=1, message_id="e3", src_node_id=1, dst_node_id=0, reply_to_message_id="q3",
        group_id="1", created_at=time.time(), ttl=60, message_type="train",
    )  # fmt: skip
    lost = Message(metadata=metadata, error=Error(code=5, reason="Node Unavailable"))
    good = [reply(1, arrays_of(1.0), {"a": 5, "b": 5}), reply(2, arrays_of(3.0), {"a": 5, "b": 5})]
    with caplog.at_level(logging.WARNING, logger="medfm"):
        arrays, _ = strategy.aggregate_train(1, [*good, lost])
    np.testing.assert_allclose(arrays["a.w"].numpy(), 2.0)
    assert [(e["event"], e["node"]) for e in strategy.events] == [("failed", 3)]
    assert "node 3 failed: Node Unavailable" in caplog.text


def test_a_private_round_missing_a_sampled_clients_update_is_refused_and_releases_nothing(caplog):
    accountant = RdpAccountant(
        AccountingConfig(
            target_delta=1e-5,
            population_size=3,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )

    def make() -> DifferentialPrivacyServerSideFixedClipping:
        inner = build_strategy(StrategyConfig("fedavg"), min_clients=3, fraction_train=1.0)
        return DifferentialPrivacyServerSideFixedClipping(inner, 1.0, 1.0, 3, accountant=accountant)

    strategy = GuardedStrategy(make, {"a": list(SHAPES)}, private=True)
    grid = InProcessGrid(ClientApp(), clients=3)  # three nodes to sample; nothing is sent
    full = {"a": 10}
    rounds = {
        1: [reply(1, arrays_of(1.0), full), reply(2, arrays_of(1.0), full)],  # node 3 never answers
        2: [
            reply(1, arrays_of(1.0), full),
            reply(2, arrays_of(1.0), full),
            reply(3, arrays_of(np.nan), full),
        ],
        3: [reply(node, arrays_of(1.0), full) for node in (1, 2, 3)],
    }
    results = {}
    with caplog.at_level(logging.WARNING, logger="medfm"):
        for server_round, replies in rounds.items():
            strategy.configure_train(server_round, arrays_of(0.0), ConfigRecord(), grid)
            results[server_round] = strategy.aggregate_train(server_round, replies)
    assert results[1] == (None, None) and results[2] == (None, None)
    assert results[3][0] is not None and accountant.num_releases == 1
    assert [(e["round"], e["event"]) for e in strategy.events] == [
        (1, "no reply"),
        (1, "refused"),
        (2, "rejected"),
        (2, "refused"),
    ]
    assert "round 1: refused to aggregate: differential privacy needs the updates of all 3" in caplog.text
