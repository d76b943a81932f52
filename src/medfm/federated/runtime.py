"""Running a federation's apps: Flower's simulation engine, or the same apps in this process.

``simulation`` is Flower's Simulation Runtime (``run_simulation``: virtual SuperNodes on Ray actors), the
way Flower users try a federation before deploying it. ``inprocess`` hands each message straight to the
ClientApp in this process (:class:`InProcessGrid`): the same ServerApp, strategies, messages and
ClientApp code, without Ray's start-up (about 8 s) or its workers, for tests and for small machines.
Deployment (SuperLink and SuperNodes as separate processes) is described in ``deploy/README.md``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from itertools import count

from flwr.app import Context, Message, RecordDict
from flwr.app.metadata import Metadata
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE = 0
RUN_ID = 1


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process, one per partition id (node id = id + 1).

    Flower's ServerApp and strategies create messages under a task identity that the SuperLink sets in a
    deployment; here the grid sets it, since no SuperLink runs.
    """

    def __init__(self, client_app: ClientApp, clients: int, run_config: dict | None = None):
        self.client_app = client_app
        self.nodes = {
            node: Context(
                run_id=RUN_ID,
                node_id=node,
                node_config={"partition-id": node - 1, "num-partitions": clients},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for node in range(1, clients + 1)
        }
        self._run = Run.create_empty(RUN_ID)
        self._ids = count(1)
        self._replies: dict[str, Message] = {}
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, SERVER_NODE, 0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(
            content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(next(self._ids))
            metadata: Metadata = message.metadata
            metadata.__dict__["_message_id"] = message_id  # the SuperLink assigns ids in a deployment
            # A copy, as a wire would deliver it: Flower's mods edit the content they receive in place.
            delivered = Message(metadata=copy.copy(metadata), content=copy.deepcopy(message.content))
            reply = self.client_app(delivered, self.nodes[metadata.dst_node_id])
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_in_process(server_app: ServerApp, client_app: ClientApp, clients: int) -> float:
    """Run the federation in this process; return its wall time in seconds."""
    start = time.perf_counter()
    grid = InProcessGrid(client_app, clients)
    server_app(
        grid=grid,
        context=Context(
            run_id=RUN_ID, node_id=SERVER_NODE, node_config={}, state=RecordDict(), run_config={}
        ),
    )
    return time.perf_counter() - start


def run_simulated(server_app: ServerApp, client_app: ClientApp, clients: int, cpus: int) -> float:
    """Run the federation on Flower's simulation engine (Ray); return its wall time in seconds."""
    start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": True},
        },
    )
    return time.perf_counter() - start
