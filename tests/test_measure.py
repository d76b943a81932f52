"""Costs: FLOPs by torch's counter, parameters, and measure() filling time, memory and energy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from medfm.measure import PowerModel, count_parameters, flops_per_example, measure


def test_flops_of_a_linear_layer_count_a_multiply_add_as_two():
    layer = torch.nn.Linear(10, 20)
    assert flops_per_example(lambda: layer(torch.zeros(4, 10)), batch_size=4) == 2 * 10 * 20
    assert count_parameters(layer) == 10 * 20 + 20


def test_measure_fills_time_memory_and_an_energy_estimate_from_its_constants():
    power = PowerModel(cpu_watts_per_core=10.0, memory_watts_per_gb=1.0)
    with measure(power) as cost:
        block = torch.ones(4_000_000)  # 16 MB held while measured
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:  # burn CPU time
            block.add_(1)
    assert cost.wall_seconds >= cost.cpu_seconds * 0.5 > 0
    assert cost.cpu_seconds >= 0.2
    expected = (cost.cpu_seconds * 10.0 + cost.peak_rss_mb / 1024 * 1.0 * cost.wall_seconds) / 3600
    assert cost.energy_wh == pytest.approx(expected)
    assert "10.0 W/core" in cost.energy_method and cost.gpu_joules is None
    assert set(cost.as_dict()) >= {"wall_seconds", "cpu_seconds", "peak_rss_mb", "energy_wh"}


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak reset needs Linux's /proc")
def test_peak_memory_belongs_to_the_measured_work_not_to_what_came_before():
    block_mb = 256
    before = current_rss_mb()
    with measure() as big:
        block = torch.ones(block_mb * 2**20 // 4)  # touched, so resident
        del block  # a large block goes back to the system when freed
    with measure() as small:
        torch.ones(1000).sum()
    # the first peak holds the block; the second, reset at its start, does not inherit it
    assert big.peak_rss_mb >= before + 0.9 * block_mb
    assert small.peak_rss_mb <= big.peak_rss_mb - 0.5 * block_mb


def test_measure_fills_its_cost_even_when_the_work_fails():
    with pytest.raises(RuntimeError), measure() as cost:
        raise RuntimeError("boom")
    assert cost.wall_seconds > 0 and cost.energy_method
