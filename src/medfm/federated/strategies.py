"""Flower strategies by name, behind a guard that checks every client update and aggregates task by task.

:func:`build_strategy` makes one of Flower's Message-API strategies (FedAvg weighted by examples, FedProx,
FedAdam, FedYogi, FedMedian, Krum, trimmed mean) with the federation's sampling settings.
:class:`GuardedStrategy` wraps one such strategy per task and, before anything is averaged:

* rejects an update whose tensors differ in name or shape from the global model's, hold NaN or Inf, or
  come without a positive example count, with a log line naming the client, and goes on with the rest;
* records failed replies and sampled clients that never answered (a SuperNode gone mid-round);
* under differential privacy, records a round that Flower's accounted DP wrapper refuses because fewer
  valid updates than sampled clients are left (the global model stays as it was);
* aggregates each task's tensors over the clients that trained that task, weighted by their examples of
  it, so a client without a task does not pull that task's weights back to the old ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from medfm.federated.config import StrategyConfig
from medfm.log import get_logger

log = get_logger("federated.strategies")

WEIGHT = "num-examples"


def build_strategy(config: StrategyConfig, *, min_clients: int, fraction_train: float) -> Strategy:
    """A Flower strategy from its config; every client evaluates the global model each round."""
    common: dict[str, Any] = {
        "fraction_train": fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": min_clients,
        "min_evaluate_nodes": min_clients,
        "min_available_nodes": min_clients,
    }
    name = config.name
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=config.proximal_mu)
    if name == "fedadam":
        return FedAdam(**common, eta=config.server_lr, tau=config.tau)
    if name == "fedyogi":
        return FedYogi(**common, eta=config.server_lr, tau=config.tau)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "krum":
        return Krum(**common, num_malicious_nodes=config.byzantine)
    if name == "trimmed_mean":
        return FedTrimmedAvg(**common, beta=config.trim_beta)
    raise ValueError(f"unknown strategy {name!r}")  # StrategyConfig refuses unknown names first


def update_problem(content: RecordDict, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """Why a client's training reply cannot be aggregated, or None when it can."""
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return "the reply must hold one ArrayRecord and one MetricRecord"
    arrays = next(iter(content.array_records.values()))
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(WEIGHT)
    if not isinstance(weight, int | float) or not weight > 0:
        return f"its {WEIGHT!r} is {weight!r}, not a positive count"
    keys = set(arrays.keys())
    if keys != set(shapes):
        extra, missing = sorted(keys - set(shapes)), sorted(set(shapes) - keys)
        return f"its tensors differ from the model's (unexpected {extra[:3]}, missing {missing[:3]})"
    for key, expected in shapes.items():
        array = arrays[key]
        if tuple(array.shape) != expected:
            return f"tensor {key} has shape {tuple(array.shape)}, the model's is {expected}"
        values = array.numpy()
        if not np.issubdtype(values.dtype, np.floating):
            return f"tensor {key} has dtype {values.dtype}, not floating point"
        if not np.isfinite(values).all():
            return f"tensor {key} holds NaN or Inf"
    return None


def with_content(reply: Message, content: RecordDict) -> Message:
    """A copy of a reply carrying other content (same sender and metadata)."""
    return Message(metadata=copy.copy(reply.metadata), content=content)


def client_of(reply: Message) -> int:
    metrics = next(iter(reply.content.metric_records.values()), {}) if reply.has_content() else {}
    return int(metrics.get("partition-id", -1))


class GuardedStrategy(Strategy):
    """Per-task Flower strategies behind update checks (see the module docstring).

    ``make_strategy`` builds one inner strategy; ``task_keys`` maps each task to its tensor names;
    ``private``: the inner strategies are Flower's accounted DP wrappers, so clients weigh equally (not by
    examples) and a round the wrapper refuses is recorded as refused.
    ``events`` collects what the guard saw, one dict per rejected, failed or missing update or refused round.
    """

    def __init__(
        self,
        make_strategy: Callable[[], Strategy],
        task_keys: dict[str, list[str]],
        private: bool = False,
    ):
        self.task_keys = task_keys
        self.private = private
        self.inner = {task: make_strategy() for task in task_keys}
        self.primary = self.inner[next(iter(task_keys))]
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.current: ArrayRecord | None = None
        self.sent: list[Message] = []
        self.events: list[dict[str, Any]] = []
        self.client_scores: list[dict[str, Any]] = []

    def summary(self) -> None:
        self.primary.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = arrays
        self.shapes = {key: tuple(array.shape) for key, array in arrays.items()}
        messages = list(self.primary.configure_train(server_round, arrays, config, grid))
        self.sent = messages  # the grid stamps their message ids when it sends them
        if len(self.inner) > 1:  # stateful strategies (FedAdam, FedYogi) keep their own task's weights
            for task, strategy in self.inner.items():
                strategy.configure_train(
                    server_round, self._subset(arrays, task), ConfigRecord(dict(config)), grid
                )
        return messages

    def _subset(self, arrays: ArrayRecord, task: str) -> ArrayRecord:
        return ArrayRecord({key: arrays[key] for key in self.task_keys[task]})

    def _note(self, server_round: int, event: str, node: int, client: int, reason: str) -> None:
        self.events.append(
            {"round": server_round, "event": event, "node": node, "client": client, "reason": reason}
        )

    def accepted(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The replies that pass the checks; the others are logged and recorded."""
        replies = list(replies)
        # An error reply about an unreachable node comes from the SuperLink: find the node by the message.
        destination = {
            m.metadata.message_id: m.metadata.dst_node_id for m in self.sent if m.metadata.message_id
        }
        node_of = {
            id(r): destination.get(r.metadata.reply_to_message_id, r.metadata.src_node_id) for r in replies
        }
        answered = set(node_of.values())
        for message in self.sent:
            node = message.metadata.dst_node_id
            if node not in answered:
                log.warning("round %d: node %d sent no update (dropped out or timed out)", server_round, node)
                self._note(server_round, "no reply", node, -1, "no reply before the round's timeout")
        good = []
        for reply in replies:
            node = node_of[id(reply)]
            if reply.has_error():
                log.warning("round %d: node %d failed: %s", server_round, node, reply.error.reason)
                self._note(server_round, "failed", node, -1, str(reply.error.reason))
                continue
            problem = update_problem(reply.content, self.shapes)
            if problem:
                log.warning(
                    "round %d: rejected the update of client %d (node %d): %s",
                    server_round,
                    client_of(reply),
                    node,
                    problem,
                )
                self._note(server_round, "rejected", node, client_of(reply), problem)
                continue
            good.append(reply)
        # Replies arrive in whatever order clients finish; summing in client order makes a round's
        # aggregate (floating point) the same on every run.
        return sorted(good, key=client_of)

    def task_updates(self, good: list[Message], task: str) -> list[Message]:
        """The replies of the clients that trained ``task``, cut to its tensors and weighted."""
        held = []
        for reply in good:
            metrics = next(iter(reply.content.metric_records.values()))
            examples = metrics.get(f"{WEIGHT}/{task}", 0)
            if examples > 0:
                arrays = next(iter(reply.content.array_records.values()))
                weight = 1 if self.private else examples
                part = RecordDict(
                    {"arrays": self._subset(arrays, task), "metrics": MetricRecord({WEIGHT: weight})}
                )
                held.append(with_content(reply, part))
        return held

    def refuse(self, server_round: int, valid: int) -> tuple[None, None]:
        """Record a round the DP wrapper refused: its noise is calibrated to every sampled client."""
        reason = (
            f"differential privacy needs the updates of all {len(self.sent)} sampled clients, "
            f"{valid} were valid; no update and no noise released"
        )
        log.warning(
            "round %d: refused to aggregate: %s; the global model stays as it was", server_round, reason
        )
        self._note(server_round, "refused", -1, -1, reason)
        return None, None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        good = self.accepted(server_round, replies)
        # A private round goes to the DP wrapper even when empty: it alone decides a release.
        if self.current is None or not (good or self.private):
            log.warning("round %d: no update to aggregate; the global model stays as it was", server_round)
            return None, None
        merged = dict(self.current.items())
        for task, strategy in self.inner.items():
            held = self.task_updates(good, task)
            if not (held or self.private):
                continue
            arrays, _ = strategy.aggregate_train(server_round, held)
            if arrays is None and self.private:
                return self.refuse(server_round, len(good))
            if arrays is not None:
                merged.update(arrays.items())
        return ArrayRecord({key: merged[key] for key in self.current}), weighted_metrics(good)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.primary.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                log.warning("round %d: an evaluation failed: %s", server_round, reply.error.reason)
                self._note(
                    server_round, "evaluation failed", reply.metadata.src_node_id, -1, str(reply.error.reason)
                )
        good = [r for r in replies if not r.has_error() and r.has_content()]
        for reply in good:
            metrics = next(iter(reply.content.metric_records.values()))
            self.client_scores.append(
                {"round": server_round, "node": reply.metadata.src_node_id, **dict(metrics)}
            )
        return weighted_metrics(good) if good else None


def weighted_metrics(replies: list[Message]) -> MetricRecord:
    """Each ``<metric>/<task>`` averaged over the clients holding the task, weighted by their examples of
    it (``num-examples/<task>``); client-level keys (``partition-id``) are left out."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for reply in replies:
        metrics = next(iter(reply.content.metric_records.values()))
        for key, value in metrics.items():
            if "/" not in key or key.startswith(WEIGHT):
                continue
            weight = float(metrics.get(f"{WEIGHT}/{key.split('/', 1)[1]}", 0))
            if weight > 0 and np.isfinite(value):
                totals[key] = totals.get(key, 0.0) + weight * float(value)
                weights[key] = weights.get(key, 0.0) + weight
    return MetricRecord({key: totals[key] / weights[key] for key in totals})
