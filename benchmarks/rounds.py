"""Alternating rounds: how every benchmark here times medfm beside its reference, and what it may claim.

A round runs every side once, always in the same order with the reference first (reference, medfm,
reference, medfm, ...), so a machine that slows down or speeds up during the benchmark touches both sides
alike. A side's figure is its median over the rounds, with the interquartile range and the range.

The comparison is paired by round: the per-round time ratio (side / reference, below 1 is faster). Its
median is the headline; its 95 % interval is the distribution-free interval for that median (the sign
test's, ``scipy.stats.quantile_test``; over 7 or 8 rounds it is the range of the ratios). The verdict is
"parity" when the interval holds 1.0, else "faster" or "slower": a difference inside the spread is not
claimed.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import quantile_test

from medfm.errors import ConfigError

# With 7 rounds a side is called faster or slower only when it is so in every round (sign test p = 1/64).
MIN_ROUNDS = 7
CONFIDENCE = 0.95

# One run of one side: returns its figures, at least "seconds" (the time of a fixed amount of work).
Side = Callable[[], dict[str, Any]]


def add_rounds_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds",
        type=int,
        default=MIN_ROUNDS,
        help=f"alternating rounds, each running every side once (at least {MIN_ROUNDS})",
    )


def alternate(sides: dict[str, Side], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Run every side once per round, in the order given (the reference first); each side's results."""
    if rounds < MIN_ROUNDS:
        raise ConfigError(f"rounds must be at least {MIN_ROUNDS} for a verdict on the spread, got {rounds}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for index in range(rounds):
        for name, side in sides.items():
            result = side()
            runs[name].append(result)
            print(f"round {index + 1}/{rounds} {name}: {result['seconds']:.4g} s", flush=True)
    return runs


@dataclass(frozen=True)
class Spread:
    median: float
    q25: float
    q75: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        q25, median, q75 = np.percentile(values, [25, 50, 75])
        return cls(float(median), float(q25), float(q75), float(min(values)), float(max(values)))


def verdict(low: float, high: float) -> str:
    """What an interval of the time ratio (side / reference) supports saying about the side."""
    if low <= 1.0 <= high:
        return "parity"
    return "faster" if high < 1.0 else "slower"


@dataclass(frozen=True)
class Comparison:
    side: str
    reference: str
    ratio: Spread  # of the per-round time ratios side / reference
    interval: tuple[float, float]  # 95 % interval of the median ratio
    verdict: str


def compare(reference: list[float], side: list[float], side_name: str, reference_name: str) -> Comparison:
    """Per-round time ratios of ``side`` to ``reference`` (paired by round), their interval, the verdict."""
    ratios = [s / r for s, r in zip(side, reference, strict=True)]
    ci = quantile_test(ratios, q=1.0, p=0.5).confidence_interval(CONFIDENCE)
    interval = (float(ci.low), float(ci.high))
    return Comparison(side_name, reference_name, Spread.of(ratios), interval, verdict(*interval))


def seconds(runs: list[dict[str, Any]]) -> list[float]:
    return [run["seconds"] for run in runs]


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each side's spread and, for every side after the first (the reference), its comparison."""
    reference, *others = runs
    return {
        "rounds": len(runs[reference]),
        "order": list(runs),
        "seconds": {name: asdict(Spread.of(seconds(side))) for name, side in runs.items()},
        "comparisons": [
            asdict(compare(seconds(runs[reference]), seconds(runs[name]), name, reference)) for name in others
        ],
        "per_round": runs,
    }


def table(summary: dict[str, Any], unit: str) -> str:
    """The summary as a text table: each side's median, IQR and range, then its ratio and verdict."""
    comparisons = {c["side"]: c for c in summary["comparisons"]}
    title = f"{summary['rounds']} rounds; {unit}"
    if comparisons:
        title = f"{summary['rounds']} alternating rounds; {unit}; ratio = time / {summary['order'][0]} "
        title += "(per round), with its 95 % interval"
    lines = [
        title,
        f"{'side':<36} {'median':>10} {'IQR':>21} {'range':>21} {'ratio':>6} {'interval':>15}  verdict",
    ]
    for name, spread in summary["seconds"].items():
        row = f"{name:<36} {spread['median']:>10.4g} {interval_text(spread['q25'], spread['q75']):>21} "
        row += f"{interval_text(spread['low'], spread['high']):>21}"
        if name in comparisons:
            c = comparisons[name]
            interval = interval_text(*c["interval"], digits=3)
            row += f" {c['ratio']['median']:>6.3f} {interval:>15}  {c['verdict']}"
        elif comparisons:
            row += f" {'1':>6} {'':>15}  reference"
        lines.append(row)
    return "\n".join(lines)


def interval_text(low: float, high: float, digits: int = 4) -> str:
    return f"[{low:.{digits}g}, {high:.{digits}g}]"


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def write_record(path: Path, benchmark: str, settings: dict[str, Any], summary: dict, **extra: Any) -> None:
    """The benchmark's JSON: when, where, its settings, the rounds' summary and anything it adds."""
    record = {
        "benchmark": benchmark,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
        **summary,
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {path}")
