"""What Flower costs: wall time per federated round through Flower beside a plain in-process FedAvg loop.

    MEDFM_DATA_ROOT=../shared/data python benchmarks/fl_overhead.py --clients 5 --rounds 5

One prepared federation (ICU mortality, PhysioNet 2012, IID over ``--clients``), one model, one local
epoch per round, and three ways to run the same FedAvg rounds:

- ``flower simulation``: medfm's ServerApp and ClientApp on Flower's Simulation Runtime (Ray actors, one
  core per client, clients side by side);
- ``flower in-process``: the same apps and Flower strategies, messages handed to the ClientApp in this
  process (no Ray);
- ``plain loop`` (the reference): for each client, load the global weights, train with the same loop
  (:func:`medfm.federated.local.train_task`), then average the weights by examples in torch, score the
  global model on each client's own test examples and on the server's validation and test splits: the
  work a Flower round does.

A round's time is the interval between the server's consecutive end-of-round records (its evaluation
included), so start-up (Ray, process spawn, data loading) is reported apart; the first simulated round
also starts Ray's actors, so the median round is the figure to compare. The table prints the median
round and the ratio to the plain loop; the JSON goes to ``benchmarks/results/fl_overhead-cpu.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from medfm.federated.apps import make_client_app, make_server_app
from medfm.federated.config import FederateConfig, FedTaskConfig, StrategyConfig
from medfm.federated.data import read_federation, read_holder
from medfm.federated.job import prepare_run
from medfm.federated.local import scores, train_task
from medfm.federated.model import build_model, exchanged
from medfm.federated.partition import PartitionConfig
from medfm.federated.runtime import run_in_process, run_simulated


def round_times(output: Path) -> list[float]:
    """Seconds between the server's consecutive round records (round 0 = the initial evaluation)."""
    stamps = [json.loads(line)["time"] for line in (output / "rounds.jsonl").read_text().splitlines()]
    return [b - a for a, b in itertools.pairwise(stamps)]


def flower(config: FederateConfig, run_dir: Path, runtime: str) -> dict:
    output = run_dir / f"out-{runtime}"
    federation = str(run_dir / "federation")
    server = make_server_app(str(run_dir / "config.yaml"), "fedavg", federation, str(output))
    client = make_client_app(federation)
    if runtime == "simulation":
        total = run_simulated(server, client, config.clients, cpus=torch.get_num_threads())
    else:
        total = run_in_process(server, client, config.clients)
    rounds = round_times(output)
    return {"total_s": total, "round_s": rounds, "startup_s": total - sum(rounds)}


def plain_loop(config: FederateConfig, run_dir: Path) -> dict:
    """FedAvg written out by hand over the same files, model and training loop."""
    start = time.perf_counter()
    folder = run_dir / "federation"
    info = read_federation(folder)
    task = next(iter(info["tasks"]))
    holders = [read_holder(folder / f"client_{i}.safetensors")[task] for i in range(config.clients)]
    server = read_holder(folder / "server.safetensors")[task]
    model = build_model(info["tasks"], config.seed)[task]
    scores(model, server["val"]), scores(model, server["test"])  # the server's round-0 evaluation
    ready = time.perf_counter()
    global_state = {k: v.clone() for k, v in exchanged(model).items()}
    rounds = []
    for server_round in range(1, config.rounds + 1):
        began = time.perf_counter()
        updates, weights = [], []
        for client, held in enumerate(holders):
            model.load_state_dict(global_state, strict=False)
            seed = 1000 * server_round + client
            train_task(model, held["train"], config.training, epochs=config.training.epochs, seed=seed)
            updates.append({k: v.detach().clone() for k, v in exchanged(model).items()})
            weights.append(len(held["train"]))
        total = sum(weights)
        global_state = {k: sum(w * u[k] for w, u in zip(weights, updates)) / total for k in global_state}
        model.load_state_dict(global_state, strict=False)
        for held in holders:  # federated evaluation: each client scores the global model on its test set
            scores(model, held["test"])
        scores(model, server["val"]), scores(model, server["test"])
        rounds.append(time.perf_counter() - began)
    return {"total_s": time.perf_counter() - start, "round_s": rounds, "startup_s": ready - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="ICU stays read (0: all 3,996)")
    parser.add_argument("--out", default="benchmarks/results/fl_overhead-cpu.json")
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        config = FederateConfig(
            name="overhead",
            output=tmp,
            clients=args.clients,
            rounds=args.rounds,
            tasks=[
                FedTaskConfig(name="icu_mortality", limit=args.limit, partition=PartitionConfig(kind="iid"))
            ],
            strategies=[StrategyConfig("fedavg")],
            baselines=[],
        )
        run_dir = prepare_run(config).resolve()
        sides = {
            "plain loop": plain_loop(config, run_dir),
            "flower in-process": flower(config, run_dir, "inprocess"),
            "flower simulation": flower(config, run_dir, "simulation"),
        }
    reference = statistics.median(sides["plain loop"]["round_s"])
    print(f"{'runtime':<20} {'median round (s)':>17} {'ratio':>7} {'start-up (s)':>13} {'total (s)':>10}")
    for name, side in sides.items():
        side["median_round_s"] = statistics.median(side["round_s"])
        side["ratio_to_plain"] = side["median_round_s"] / reference
        print(
            f"{name:<20} {side['median_round_s']:>17.2f} {side['ratio_to_plain']:>7.2f} "
            f"{side['startup_s']:>13.1f} {side['total_s']:>10.1f}"
        )
    record = {
        "benchmark": "fl_overhead",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
        },
        "settings": vars(args),
        "sides": sides,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
