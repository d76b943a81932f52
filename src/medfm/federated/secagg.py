"""Secure aggregation with Flower's SecAgg+ protocol (Bell et al. 2020): the server learns only the sum of
the clients' weighted models, never one client's.

In Flower 1.42 SecAgg+ exists only on the legacy server path: ``SecAggPlusWorkflow`` drives Flower's
legacy ``FedAvg`` through a ``LegacyContext``, and clients run ``secaggplus_mod``, which masks and
quantises what the train handler returns in the legacy ``fitins`` / ``fitres`` records. So a SecAgg+
federation is FedAvg only, and has no per-client guard: the server cannot check an update it never sees
(a client sending NaN or poison would go unnoticed). Clients evaluate nothing (their metrics would be
per-client information); the server scores each round on its own val and test splits as usual.

SecAgg+ quantises each weighted weight on a grid over ``[-clipping_range, clipping_range]`` and clamps
what lies outside without warning, so the server refuses to start when a weight of the initial model
lies outside, and ``max_weight`` is set to the largest client's example count (a larger bound coarsens
the grid).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from medfm.errors import ConfigError
from medfm.federated.model import exchanged, load_state

FITINS_PARAMETERS = "fitins.parameters"


def secagg_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` on the messages of a SecAgg+ round; others pass through."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_legacy_train(msg: Message) -> bool:
    return FITINS_PARAMETERS in msg.content.array_records


def legacy_train(
    msg: Message, train: Callable[[dict[str, Any], list[np.ndarray]], tuple[dict, int]]
) -> Message:
    """Answer a legacy train message: ``train(config, arrays) -> (state dict, examples)`` does the work."""
    fitins = recorddict_to_fitins(msg.content, keep_input=True)
    config = {k: v for k, v in fitins.config.items()}
    state, examples = train(config, parameters_to_ndarrays(fitins.parameters))
    result = FitRes(
        Status(Code.OK, ""), ndarrays_to_parameters([v.numpy() for v in state.values()]), examples, {}
    )
    return Message(fitres_to_recorddict(result, keep_input=False), reply_to=msg)


def load_ndarrays(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    """Set the exchanged tensors of ``model`` from a list in their order (the legacy records' form)."""
    names = list(exchanged(model))
    if len(arrays) != len(names):
        raise ConfigError(f"received {len(arrays)} arrays for a model exchanging {len(names)} tensors")
    load_state(model, dict(zip(names, map(torch.as_tensor, arrays))))


def run_secagg(
    grid: Grid,
    context: Context,
    initial: list[np.ndarray],
    rounds: int,
    train_config: dict[str, Any],
    evaluate: Callable[[int, list[np.ndarray]], tuple[float, dict]],
    *,
    clients: int,
    min_clients: int,
    max_weight: int,
    clipping_range: float,
    timeout: float,
) -> None:
    """FedAvg rounds under SecAgg+; ``evaluate(round, ndarrays)`` scores and saves each round's model."""
    largest = max(float(np.abs(a).max()) for a in initial)
    if largest > clipping_range:
        raise ConfigError(
            f"a weight of the model is {largest:.3g}, outside SecAgg+'s clipping range {clipping_range}; "
            "raise privacy.secagg_clipping_range"
        )
    strategy = LegacyFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=min_clients,
        min_available_clients=min_clients,
        initial_parameters=ndarrays_to_parameters(initial),
        on_fit_config_fn=lambda server_round: {**train_config, "server-round": server_round},
        evaluate_fn=lambda server_round, ndarrays, _: evaluate(server_round, ndarrays),
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=clients,  # every client holds a share of every other's secrets
            reconstruction_threshold=max(2, min_clients),
            max_weight=max_weight,
            clipping_range=clipping_range,
            timeout=timeout,
        )
    )
    workflow(
        grid,
        LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds, round_timeout=timeout), strategy=strategy
        ),
    )
