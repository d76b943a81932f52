"""What Flower costs: wall time per federated round through Flower beside a plain in-process FedAvg loop.

    MEDFM_DATA_ROOT=../shared/data python benchmarks/fl_overhead.py --clients 5 --fl-rounds 5 --rounds 7

One prepared federation (ICU mortality, PhysioNet 2012, IID over ``--clients``), one model, one local
epoch per round, and three ways to run the same ``--fl-rounds`` FedAvg rounds, each once per measurement
round, in alternating rounds (``rounds.py``: plain loop, in-process, simulation, plain loop, ...; at least
7):

- ``flower simulation``: medfm's ServerApp and ClientApp on Flower's Simulation Runtime (Ray actors, one
  core per client, clients side by side);
- ``flower in-process``: the same apps and Flower strategies, messages handed to the ClientApp in this
  process (no Ray);
- ``plain loop`` (the reference): for each client, load the global weights, train with the same loop
  (:func:`medfm.federated.local.train_task`), then average the weights by examples in torch, score the
  global model on each client's own test examples and on the server's validation and test splits: the
  work a Flower round does.

A federated round's time is the interval between the server's consecutive end-of-round records (its evaluation
included), so start-up (Ray, process spawn, data loading) is reported apart; the first simulated round
also starts Ray's actors, so a run's median federated round is its figure. The table prints each side's
median over measurement rounds with its spread, the per-round time ratio to the plain loop with its
interval and verdict (parity, faster or slower); the JSON goes to ``benchmarks/results/fl_overhead-cpu.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import time
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
from rounds import add_rounds_argument, alternate, summarise, table, write_record


def round_times(output: Path) -> list[float]:
    """Seconds between the server's consecutive round records (round 0 = the initial evaluation)."""
    stamps = [json.loads(line)["time"] for line in (output / "rounds.jsonl").read_text().splitlines()]
    return [b - a for a, b in itertools.pairwise(stamps)]


def flower(config: FederateConfig, run_dir: Path, runtime: str) -> dict:
    output = run_dir / f"out-{runtime}"
    shutil.rmtree(output, ignore_errors=True)  # a fresh run each time, not a resumed one
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


def median_round(run: dict) -> dict:
    """A measurement round's figure: the median federated round of the run, with its start-up and total."""
    return {"seconds": statistics.median(run["round_s"]), **run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--fl-rounds", type=int, default=5, help="FedAvg rounds of each run")
    parser.add_argument("--limit", type=int, default=0, help="ICU stays read (0: all 3,996)")
    add_rounds_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fl_overhead-cpu.json"))
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        config = FederateConfig(
            name="overhead",
            output=tmp,
            clients=args.clients,
            rounds=args.fl_rounds,
            tasks=[
                FedTaskConfig(name="icu_mortality", limit=args.limit, partition=PartitionConfig(kind="iid"))
            ],
            strategies=[StrategyConfig("fedavg")],
            baselines=[],
        )
        run_dir = prepare_run(config).resolve()
        sides = {
            "plain loop": lambda: median_round(plain_loop(config, run_dir)),
            "flower in-process": lambda: median_round(flower(config, run_dir, "inprocess")),
            "flower simulation": lambda: median_round(flower(config, run_dir, "simulation")),
        }
        summary = summarise(alternate(sides, args.rounds))
    print(table(summary, "median seconds per federated round"))
    for name, runs in summary["per_round"].items():
        startup = statistics.median(r["startup_s"] for r in runs)
        total = statistics.median(r["total_s"] for r in runs)
        print(f"{name:<20} median start-up {startup:.1f} s, median whole run {total:.1f} s")
    write_record(args.out, "fl_overhead", vars(args), summary)


if __name__ == "__main__":
    main()
