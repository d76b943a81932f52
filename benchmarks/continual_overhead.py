"""What the plugin design costs: replay training through the engine and a strategy's hooks beside a plain
PyTorch loop doing the same work.

    MEDFM_DATA_ROOT=../shared/data python benchmarks/continual_overhead.py --steps 20 --rounds 7

One real two-experience stream (PneumoniaMNIST, then PhysioNet 2012 mortality, task-incremental on one
``test_vit``-sized or ``--encoder`` trunk). After the first experience fills a reservoir memory, the
second experience is trained for ``--steps`` steps with replay in two ways, once each per round, in
alternating rounds (``rounds.py``: plain loop, engine, plain loop, engine, ...; at least 7):

- ``medfm engine + hooks``: :class:`medfm.engine.trainer.Trainer` with the replay strategy's hook (what
  ``medfm continual`` runs), AdamW with the cosine schedule, clipping, metrics;
- ``plain loop`` (the reference): a hand-written loop over the same model, memory and batch composition
  (current examples plus as many remembered ones, drawn from the same buffer), AdamW at a fixed learning
  rate, clipping.

Every round starts both from the same weights and memory. A round's figure is the median step of its run;
the table prints each side's median over rounds with its spread, the engine's per-round time ratio to the
loop with its interval and verdict (parity, faster or slower), then examples per second (current plus
replayed) and peak resident memory; the JSON goes to ``benchmarks/results/continual_overhead-cpu.json``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from medfm.continual.config import ContinualConfig, ExperienceConfig, ExperienceTrainConfig, StrategyConfig
from medfm.continual.learner import StreamData
from medfm.continual.model import build_model
from medfm.continual.strategies import STRATEGIES
from medfm.continual.stream import build_stream
from medfm.engine.hooks import Hook
from medfm.engine.trainer import Trainer
from medfm.measure import measure
from rounds import add_rounds_argument, alternate, summarise, table, write_record


class StepTimes(Hook):
    name = "times"

    def __init__(self):
        self.stamps: list[float] = []

    def after_step(self, trainer):
        self.stamps.append(time.perf_counter())


def engine_run(model, stream, strategy, config, steps: int) -> dict:
    dataset = StreamData(stream, [1])
    engine = config.train.engine(steps, seed=0)
    times = StepTimes()
    with TemporaryDirectory() as folder, measure() as cost:
        start = time.perf_counter()
        trainer = Trainer(
            model, dataset, engine, folder, hooks=[*strategy.hooks(1, model), times], collate=dataset.collate
        )
        trainer.fit()
    intervals = [b - a for a, b in zip([start, *times.stamps[:-1]], times.stamps)]
    return {"step_seconds": intervals, "peak_rss_mb": cost.peak_rss_mb}


def plain_run(model, stream, strategy, config, steps: int) -> dict:
    """The same work by hand: current batch + remembered batch, mean loss over both, AdamW, clipping."""
    train = stream.experiences[1].splits["train"]
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    generator = torch.Generator().manual_seed(0)
    batch_size = config.train.batch_size
    intervals = []
    model.train()
    with measure() as cost:
        order = torch.randperm(len(train), generator=generator)
        for step in range(steps):
            start = time.perf_counter()
            rows = order[(step * batch_size) % (len(order) - batch_size) :][:batch_size]
            parts = [
                {
                    "head": stream.experiences[1].head,
                    "inputs": {k: v[rows] for k, v in train.inputs.items()},
                    "y": train.y[rows],
                }
            ]
            for part in strategy.buffer.sample(batch_size, generator):
                head = stream.experiences[part.experience].head
                parts.append({"head": head, "inputs": part.inputs, "y": part.y})
            loss = model({"parts": parts})["loss"]
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip_grad)
            optimiser.step()
            intervals.append(time.perf_counter() - start)
    return {"step_seconds": intervals, "peak_rss_mb": cost.peak_rss_mb}


def median_step(run: dict) -> dict:
    """A round's figure: the median step (the first step warms up), with the run's peak memory."""
    return {"seconds": statistics.median(run["step_seconds"][1:]), "peak_rss_mb": run["peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per side and round")
    parser.add_argument("--encoder", default="vit_micro_patch4")
    parser.add_argument("--batch-size", type=int, default=64)
    add_rounds_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/continual_overhead-cpu.json"))
    args = parser.parse_args()
    config = ContinualConfig(
        encoder=args.encoder,
        experiences=[
            ExperienceConfig(task="pneumoniamnist"),
            ExperienceConfig(task="physionet2012_mortality"),
        ],
        strategies=[StrategyConfig("replay")],
        train=ExperienceTrainConfig(batch_size=args.batch_size, lr=1e-3),
    )
    stream = build_stream(config)
    model = build_model(stream, config.signal_patch, seed=0)
    strategy = STRATEGIES.get("replay")(config.strategies[0], stream, 0, args.batch_size)
    strategy.start(model)
    strategy.after_experience(0, model)  # the memory holds the first experience's examples

    def side(run):  # every round starts from the same weights and memory (training only samples it)
        return lambda: median_step(run(copy.deepcopy(model), stream, strategy, config, args.steps))

    sides = {"plain loop": side(plain_run), "medfm engine + hooks": side(engine_run)}
    summary = summarise(alternate(sides, args.rounds))
    print(table(summary, "median seconds per training step"))
    examples = 2 * args.batch_size  # current plus as many replayed
    rates = {name: round(examples / s["median"], 1) for name, s in summary["seconds"].items()}
    peaks = {name: max(r["peak_rss_mb"] for r in runs) for name, runs in summary["per_round"].items()}
    for name in sides:
        print(f"{name:<22} {rates[name]:>8.1f} examples/s  peak RSS {peaks[name]:.0f} MB")
    write_record(
        args.out,
        "continual_overhead",
        vars(args),
        summary,
        memory_examples=len(strategy.buffer),
        examples_per_second=rates,
        peak_rss_mb=peaks,
    )


if __name__ == "__main__":
    main()
