"""The Flower apps of a medfm federation, on Flower's Message API.

**ClientApp** (one per hospital): holds one client file of :mod:`medfm.federated.data`, found from the node's
``data-path`` (deployment: ``flower-supernode --node-config "data-path='...'"``) or, in simulation, from
the run's ``federation-dir`` and the node's ``partition-id``. On a train message it loads the global
weights, trains every task it holds (FedProx's proximal term when the message carries ``proximal-mu``)
and replies with its weights and, per task, its example count and loss. On an evaluate message it scores
the global model on its own test examples. The model spec and the training settings come in the message,
so a client needs nothing but its data. Only a ClientApp that medfm's simulation or in-process runtime
builds (``make_client_app(inject_faults=True)``) obeys the message's attack setting; the deployed one
(``client_app``) ignores it with a warning, so no server can make a hospital corrupt its update.

**ServerApp**: reads the resolved federation config (``config-file``), builds the model and the chosen
strategy behind :class:`~medfm.federated.strategies.GuardedStrategy`, and runs ``Strategy.start`` with a
server-side evaluation each round on the pooled validation and test splits. Each round's global weights
are saved (safetensors) with a metrics line (under DP, with the private releases made so far); the round
with the best mean validation AUROC is kept as ``best.safetensors``; a run started again over the same
output resumes after its last saved round.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, RdpAccountant, ServerApp
from safetensors.torch import load_file, save_file

from medfm.config import load_config
from medfm.errors import ConfigError
from medfm.evaluate.inputs import Split
from medfm.federated.config import AttackConfig, FederateConfig, LocalTrainingConfig, StrategyConfig
from medfm.federated.data import read_federation, read_holder
from medfm.federated.local import predict, scores, train_task
from medfm.federated.model import build_model, exchanged, load_arrays, load_state, task_keys, to_arrays
from medfm.federated.privacy import clip_when_asked, dp_sample_size, privacy_accountant, wrap_privacy
from medfm.federated.secagg import is_legacy_train, legacy_train, load_ndarrays, run_secagg, secagg_when_asked
from medfm.federated.strategies import WEIGHT, GuardedStrategy, build_strategy
from medfm.log import get_logger, setup_logging

log = get_logger("federated.apps")

# ---------------------------------------------------------------- client side


class ClientState:
    """What a client process keeps between rounds: its data and a model built from the first message."""

    def __init__(self, data_path: Path, partition_id: int):
        self.path = data_path
        self.partition_id = partition_id
        self.data = read_holder(data_path)
        self.model: torch.nn.ModuleDict | None = None

    def ready_model(self, config: Mapping[str, Any]) -> torch.nn.ModuleDict:
        """The model, built from the spec in the first message this process receives."""
        if self.model is None:
            self.model = build_model(json.loads(str(config["model-spec"])))
        return self.model

    def train_round(self, config: Mapping[str, Any]) -> tuple[dict[str, float | int], int]:
        """Train every task this client holds for one round; its metrics and training examples."""
        model = self.ready_model(config)
        if int(config.get("threads", 0)) > 0:
            torch.set_num_threads(int(config["threads"]))
        training = LocalTrainingConfig(**json.loads(str(config["training"])))
        mu = float(config.get("proximal-mu", 0.0))
        seed = 1000 * int(config["server-round"]) + self.partition_id
        metrics: dict[str, float | int] = {"partition-id": self.partition_id}
        total = 0
        for task in model:
            held = self.data.get(task, {}).get("train")
            count = len(held) if held is not None else 0
            loss = 0.0
            if count:
                result = train_task(
                    model[task], held, training, epochs=training.epochs, seed=seed, proximal_mu=mu
                )
                loss = result["loss"]
            metrics[f"{WEIGHT}/{task}"] = count
            metrics[f"train-loss/{task}"] = loss
            total += count
        metrics[WEIGHT] = total
        return metrics, total


# Client states of this process, by data file and its modification time (a re-prepared file is reread).
_clients: dict[tuple[str, int], ClientState] = {}


def client_state(context: Context, federation_dir: str = "") -> ClientState:
    node, run = context.node_config, context.run_config
    partition = int(node.get("partition-id", -1))
    folder = run.get("federation-dir") or federation_dir
    if node.get("data-path"):
        path = Path(str(node["data-path"]))
    elif folder and partition >= 0:
        path = Path(str(folder)) / f"client_{partition}.safetensors"
    else:
        raise ConfigError("a medfm client needs node config data-path, or federation-dir and partition-id")
    if not path.is_file():
        raise ConfigError(f"client {partition}: data file not found: {path}")
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _clients:
        _clients[key] = ClientState(path, partition)
    return _clients[key]


def attack(arrays: ArrayRecord, attack: AttackConfig, seed: int) -> ArrayRecord:
    """The update a misbehaving client sends instead of ``arrays`` (see :class:`AttackConfig`)."""
    state = arrays.to_torch_state_dict()
    if attack.kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        state = {k: v + attack.scale * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    elif attack.kind == "nan":
        state = {k: torch.full_like(v, math.nan) for k, v in state.items()}
    elif attack.kind == "shape":
        first = next(iter(state))
        state[first] = torch.zeros(*state[first].shape, 2)
    return ArrayRecord(state)


def misbehave(
    arrays: ArrayRecord, config: Mapping[str, Any], partition_id: int, inject_faults: bool
) -> ArrayRecord:
    """The update to send: ``arrays``, or the attack the message's config asks of this client when faults
    may be injected (medfm's simulation and in-process runtimes only)."""
    requested = AttackConfig(**json.loads(str(config.get("attack", "{}"))))
    if requested.kind == "none" or partition_id not in requested.clients:
        return arrays
    if not inject_faults:
        log.warning(
            "client %d: ignored the server's request for a %r attack: faults are injected only in "
            "medfm's simulation and in-process runtimes",
            partition_id,
            requested.kind,
        )
        return arrays
    return attack(arrays, requested, int(config["server-round"]))


def make_client_app(federation_dir: str = "", inject_faults: bool = False) -> ClientApp:
    """The ClientApp; ``federation_dir`` is where simulated clients find their files; ``inject_faults``
    lets the message's attack setting corrupt the update (medfm's own runtimes set it, never a deployment)."""
    app = ClientApp()

    @app.train(mods=[secagg_when_asked, clip_when_asked])
    def train(msg: Message, context: Context) -> Message:
        state = client_state(context, federation_dir)
        if is_legacy_train(msg):  # a SecAgg+ round (Flower's legacy records)

            def train_legacy(config, arrays):
                load_ndarrays(state.ready_model(config), arrays)
                _, total = state.train_round(config)
                return exchanged(state.model), total

            return legacy_train(msg, train_legacy)
        config = msg.content["config"]
        load_arrays(state.ready_model(config), msg.content["arrays"])
        metrics, _ = state.train_round(config)
        arrays = misbehave(to_arrays(state.model), config, state.partition_id, inject_faults)
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        state = client_state(context, federation_dir)
        model = state.ready_model(msg.content["config"])
        load_arrays(model, msg.content["arrays"])
        metrics: dict[str, float | int] = {"partition-id": state.partition_id}
        total = 0
        for task in model:
            held = state.data.get(task, {}).get("test")
            values = scores(model[task], held) if held is not None else {"auroc": 0.0, "loss": 0.0}
            count = len(held) if held is not None else 0
            metrics[f"{WEIGHT}/{task}"] = count
            metrics[f"auroc/{task}"] = values["auroc"] if count else 0.0
            metrics[f"loss/{task}"] = values["loss"] if count else 0.0
            total += count
        metrics[WEIGHT] = total
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


# ---------------------------------------------------------------- server side


def find_strategy(config: FederateConfig, label: str) -> StrategyConfig:
    for strategy in config.strategies:
        if label in (strategy.label, strategy.name):
            return strategy
    raise ConfigError(
        f"no strategy {label!r} in the config; strategies: {[s.label for s in config.strategies]}"
    )


def saved_rounds(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in folder.glob("round_*.safetensors"))


class ServerRun:
    """One strategy's federation on the server: evaluation each round, saved rounds, best model."""

    def __init__(self, config: FederateConfig, strategy: StrategyConfig, federation_dir: Path, output: Path):
        self.config, self.strategy_config = config, strategy
        # Simulated clients run side by side, one core each; in-process ones take the configured threads.
        self.client_threads = 1 if config.runtime == "simulation" else config.threads
        self.federation = read_federation(federation_dir)
        self.server = read_holder(federation_dir / "server.safetensors")
        self.output = output
        self.rounds_dir = output / "rounds"
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        self.model = build_model(self.federation["tasks"], config.seed)
        self.offset = 0
        self.accountant: RdpAccountant | None = None  # Flower's, under DP; set when the run starts
        self.best = {"round": -1, "val_auroc": -math.inf}
        best_file = output / "best.json"
        if best_file.is_file():  # a resumed run; an undefined validation AUROC is stored as null
            saved = json.loads(best_file.read_text())
            value = saved["val_auroc"]
            self.best = {"round": saved["round"], "val_auroc": -math.inf if value is None else value}

    def initial_arrays(self) -> ArrayRecord:
        """The model's initial weights, or the last saved round's when resuming."""
        done = saved_rounds(self.rounds_dir)
        if done:
            self.offset = done[-1]
            log.info("resuming %s after round %d", self.output.name, self.offset)
            saved = load_file(str(self.rounds_dir / f"round_{self.offset}.safetensors"))
            return ArrayRecord({key: saved[key] for key in exchanged(self.model)})  # the model's order
        return to_arrays(self.model)

    def saved_releases(self) -> int:
        """Private releases made up to the round a resumed run starts after (0 for a new run)."""
        lines = (self.output / "rounds.jsonl").read_text().splitlines() if self.offset else []
        done = [json.loads(line) for line in lines]
        return max((r.get("dp_releases", 0) for r in done if r["round"] <= self.offset), default=0)

    def split_scores(self, split: str) -> dict[str, dict[str, float]]:
        return {
            task: scores(self.model[task], parts[split])
            for task, parts in self.server.items()
            if split in parts
        }

    def evaluate(
        self, strategy: GuardedStrategy | None, server_round: int, state: dict[str, torch.Tensor]
    ) -> MetricRecord:
        """Score the global model ``state``, save the round, keep the best (``strategy`` gives the
        round's client scores and guard events; SecAgg+ rounds have neither)."""
        current = server_round + self.offset
        state = {key: tensor.contiguous() for key, tensor in state.items()}
        load_state(self.model, state)
        val, test = self.split_scores("val"), self.split_scores("test")
        defined = [v["auroc"] for v in val.values() if np.isfinite(v["auroc"])]
        val_auroc = float(np.mean(defined)) if defined else math.nan
        record = {
            "round": current,
            "time": time.time(),
            "val_auroc": val_auroc,
            **{f"val_auroc/{t}": v["auroc"] for t, v in val.items()},
            **{f"test_auroc/{t}": v["auroc"] for t, v in test.items()},
            **{f"test_loss/{t}": v["loss"] for t, v in test.items()},
            "clients": [s for s in strategy.client_scores if s["round"] == server_round] if strategy else [],
            "events": [e for e in strategy.events if e["round"] == server_round] if strategy else [],
        }
        if self.accountant is not None:
            record["dp_releases"] = self.accountant.num_releases
        if server_round > 0 or self.offset == 0:
            save_file(state, str(self.rounds_dir / f"round_{current}.safetensors"))
            with (self.output / "rounds.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        # Ties keep the later round, so a validation split on which AUROC is undefined (one class) keeps
        # the last round rather than the initial model.
        if (val_auroc if np.isfinite(val_auroc) else -math.inf) >= self.best["val_auroc"]:
            self.best = {"round": current, "val_auroc": val_auroc if np.isfinite(val_auroc) else -math.inf}
            save_file(state, str(self.output / "best.safetensors"))
            value = self.best["val_auroc"]
            (self.output / "best.json").write_text(
                json.dumps({"round": current, "val_auroc": value if np.isfinite(value) else None})
            )
        log.info("%s round %d: mean val AUROC %.3f", self.strategy_config.label, current, val_auroc)
        return MetricRecord({"val_auroc": val_auroc})

    def run(self, grid: Grid, context: Context) -> dict[str, Any]:
        keys = task_keys(self.model)
        config, strategy_config = self.config, self.strategy_config

        least = dp_sample_size(config.privacy, config.clients, config.fraction_train, config.min_clients)
        arrays = self.initial_arrays()
        self.accountant = privacy_accountant(config, self.saved_releases())

        def make() -> Any:
            inner = build_strategy(strategy_config, min_clients=least, fraction_train=config.fraction_train)
            return wrap_privacy(inner, config, self.accountant)

        guarded = GuardedStrategy(make, keys, private=self.accountant is not None)
        remaining = config.rounds - self.offset
        train_config = ConfigRecord(
            {
                "model-spec": json.dumps(self.federation["tasks"]),
                "training": json.dumps(asdict(config.training)),
                "attack": json.dumps(asdict(config.attack)),
                "threads": self.client_threads,
            }
        )
        if remaining > 0 and config.privacy.secagg:
            self.run_secagg(grid, context, arrays, remaining, dict(train_config))
        elif remaining > 0:
            guarded.start(
                grid=grid,
                initial_arrays=arrays,
                num_rounds=remaining,
                timeout=config.round_timeout,
                train_config=train_config,
                evaluate_config=ConfigRecord({"model-spec": train_config["model-spec"]}),
                evaluate_fn=lambda r, a: self.evaluate(guarded, r, a.to_torch_state_dict()),
            )
        self.save_best_predictions()
        return self.best

    def run_secagg(
        self, grid: Grid, context: Context, arrays: ArrayRecord, rounds: int, train_config: dict
    ) -> None:
        names = list(arrays.keys())

        def evaluate(server_round: int, ndarrays: list[np.ndarray]) -> tuple[float, dict]:
            state = {n: torch.as_tensor(a, dtype=torch.float32) for n, a in zip(names, ndarrays)}
            self.evaluate(None, server_round, state)
            return 0.0, {}

        per_client = np.sum([task["train_per_client"] for task in self.federation["tasks"].values()], axis=0)
        run_secagg(
            grid,
            context,
            [a.numpy() for a in arrays.values()],
            rounds,
            train_config,
            evaluate,
            clients=self.config.clients,
            min_clients=self.config.min_clients,
            max_weight=int(per_client.max()),
            clipping_range=self.config.privacy.secagg_clipping_range,
            timeout=self.config.round_timeout,
        )

    def save_best_predictions(self) -> None:
        """Test probabilities of the best round's model, for the report's intervals."""
        self.model.load_state_dict(load_file(str(self.output / "best.safetensors")), strict=False)
        for task, parts in self.server.items():
            test: Split = parts["test"]
            np.savez(
                self.output / f"test_{task}.npz",
                y=test.y.numpy(),
                prob=predict(self.model[task], test),
                subjects=test.subjects.astype(str),
            )


def make_server_app(
    config_file: str = "", strategy: str = "", federation_dir: str = "", output: str = ""
) -> ServerApp:
    """The ServerApp; the arguments are defaults for the run config keys of the same names."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        setup_logging()  # a deployed ServerApp's log reaches `flwr log` through stderr
        run = context.run_config
        defaults = {"config-file": config_file, "federation-dir": federation_dir, "output-dir": output}
        paths = {key: Path(str(run.get(key) or value)) for key, value in defaults.items()}
        relative = [key for key, path in paths.items() if not path.is_absolute()]
        if relative:
            raise ConfigError(f"run config {relative} must be absolute paths on the server's machine")
        config = load_config(FederateConfig, paths["config-file"])
        if config.threads:
            torch.set_num_threads(config.threads)
        chosen = find_strategy(config, str(run.get("strategy") or strategy))
        server = ServerRun(config, chosen, paths["federation-dir"], paths["output-dir"])
        if "client-threads" in run:  # a deployment: each hospital's machine, not the simulation's share
            server.client_threads = int(run["client-threads"])
        server.run(grid, context)

    return app


# Entry points of a deployed federation (``flwr run`` with the app in deploy/; see docs).
client_app = make_client_app()
server_app = make_server_app()
