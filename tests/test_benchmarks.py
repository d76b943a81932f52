"""The benchmarks' shared rounds: alternation order, paired ratios and the verdict on their spread."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import pytest

from medfm.errors import ConfigError

ROUNDS_FILE = Path(__file__).parents[1] / "benchmarks" / "rounds.py"


@pytest.fixture(scope="module")
def rounds():
    """benchmarks/rounds.py (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("benchmark_rounds", ROUNDS_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def fake_side(name: str, times, calls: list[str]):
    """A side that records when it runs and reports the next of ``times`` as its seconds."""
    times = iter(times)

    def run():
        calls.append(name)
        return {"seconds": next(times), "name": name}

    return run


def test_rounds_alternate_reference_then_medfm_and_keep_each_side_in_order(rounds):
    calls: list[str] = []
    sides = {
        "reference": fake_side("reference", [1, 2, 3, 4, 5, 6, 7], calls),
        "medfm": fake_side("medfm", [10, 20, 30, 40, 50, 60, 70], calls),
    }
    runs = rounds.alternate(sides, 7)
    assert calls == ["reference", "medfm"] * 7
    assert [r["seconds"] for r in runs["reference"]] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["seconds"] for r in runs["medfm"]] == [10, 20, 30, 40, 50, 60, 70]
    assert runs["medfm"][0]["name"] == "medfm"  # a side's other figures are kept


def test_fewer_than_seven_rounds_are_refused(rounds):
    calls: list[str] = []
    with pytest.raises(ConfigError, match="at least 7"):
        rounds.alternate({"reference": fake_side("reference", [1] * 6, calls)}, 6)
    assert calls == []


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.9, 1.1, "parity"),
        (1.0, 1.2, "parity"),  # an interval touching 1.0 holds it
        (0.8, 1.0, "parity"),
        (0.8, 0.95, "faster"),
        (1.05, 1.3, "slower"),
    ],
)
def test_verdict_is_parity_when_the_interval_holds_one(rounds, low, high, expected):
    assert rounds.verdict(low, high) == expected


def test_pairing_by_round_sees_a_steady_gain_through_a_drifting_machine(rounds):
    """The machine slows down round after round; medfm takes 0.9 of the reference's time in each round.
    The sides' ranges overlap, the per-round ratios do not straddle 1."""
    reference = [1.0 + 0.2 * i for i in range(7)]
    comparison = rounds.compare(reference, [0.9 * r for r in reference], "medfm", "reference")
    assert comparison.ratio.median == pytest.approx(0.9)
    assert comparison.verdict == "faster"
    slower = rounds.compare(reference, [1.5 * r for r in reference], "medfm", "reference")
    assert slower.ratio.median == pytest.approx(1.5) and slower.verdict == "slower"


def test_one_round_the_other_way_makes_seven_rounds_parity(rounds):
    reference = [1.0] * 7
    medfm = [0.9, 0.92, 0.88, 0.91, 0.9, 0.93, 1.02]
    comparison = rounds.compare(reference, medfm, "medfm", "reference")
    assert comparison.interval == pytest.approx((0.88, 1.02))  # 7 rounds: the range of the ratios
    assert comparison.verdict == "parity"


def test_the_committed_pretraining_rounds_are_parity(rounds):
    """The per-round step times (ms) once reported as a 1.05x speed-up."""
    medfm = [978.45, 986.12, 993.26, 1035.76, 1070.51, 1073.1]
    reference = [1012.79, 1069.39, 1047.41, 1066.08, 1074.72, 1071.54]
    assert rounds.compare(reference, medfm, "medfm", "reference").verdict == "parity"


def test_summary_compares_every_side_with_the_first_and_prints_the_verdict(rounds):
    calls: list[str] = []
    sides = {
        "plain": fake_side("plain", [2.0] * 7, calls),
        "medfm": fake_side("medfm", [1.0] * 7, calls),
        "other": fake_side("other", itertools.cycle([1.8, 2.2]), calls),
    }
    summary = rounds.summarise(rounds.alternate(sides, 7))
    assert calls == ["plain", "medfm", "other"] * 7
    assert summary["rounds"] == 7 and summary["order"] == ["plain", "medfm", "other"]
    assert summary["seconds"]["plain"]["median"] == 2.0
    verdicts = {
        c["side"]: (c["reference"], c["ratio"]["median"], c["verdict"]) for c in summary["comparisons"]
    }
    assert verdicts == {"medfm": ("plain", 0.5, "faster"), "other": ("plain", 0.9, "parity")}
    text = rounds.table(summary, "seconds per run")
    assert "reference" in text.splitlines()[2] and "faster" in text and "parity" in text


def test_a_side_without_reference_gets_its_spread_and_no_verdict(rounds):
    calls: list[str] = []
    summary = rounds.summarise(rounds.alternate({"medfm": fake_side("medfm", range(1, 8), calls)}, 7))
    assert summary["comparisons"] == [] and summary["seconds"]["medfm"]["median"] == 4
    text = rounds.table(summary, "seconds per step")
    assert "ratio =" not in text and "parity" not in text and "reference" not in text
