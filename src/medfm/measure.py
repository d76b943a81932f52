"""What a piece of work costs: parameters, FLOPs per example, wall and CPU time, peak memory, energy.

``measure()`` wraps any work and fills a :class:`Cost` when it ends. Peak memory is the process's
resident set: on Linux its high-water mark is reset when the work starts (``/proc/self/clear_refs``), so
the peak belongs to this work and not to what the process did before; elsewhere it is the process's
peak so far. On a GPU, torch's peak allocation is reset and read the same way.

Energy is an estimate in the manner of Green Algorithms (Lannelongue et al., Adv. Sci. 2021): CPU time
times a power per core, plus memory power for the peak resident set over the wall time, plus GPU energy
(NVIDIA's counter when ``pynvml`` can read it, else a stated board power over the wall time). The
constants are settings, written next to every estimate.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class PowerModel:
    cpu_watts_per_core: float = 12.0  # Green Algorithms' default per-core power for server CPUs
    memory_watts_per_gb: float = 0.3725  # Green Algorithms' memory power
    gpu_watts: float = 700.0  # board power used when the GPU's energy counter cannot be read (H100/H200 SXM)


@dataclass
class Cost:
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process, all threads
    peak_rss_mb: float = 0.0
    gpu_peak_mb: float | None = None
    gpu_joules: float | None = None
    energy_wh: float = 0.0
    energy_method: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {**{k: v for k, v in values.items() if k != "extra"}, **self.extra}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def flops_per_example(forward: Callable[[], Any], batch_size: int) -> float:
    """FLOPs of one call of ``forward`` (a batch of ``batch_size``), per example; a multiply-add counts 2."""
    with FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops() / max(1, batch_size)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _gpu_energy_counter() -> Callable[[], float] | None:
    """Millijoules used by the current GPU since the driver loaded, or None where that cannot be read."""
    if not torch.cuda.is_available():
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return lambda: float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    except Exception:  # no pynvml, no permission, or a GPU without the counter: fall back to board power
        return None


@contextmanager
def measure(power: PowerModel | None = None) -> Iterator[Cost]:
    """Measure the work inside the ``with`` block; the yielded :class:`Cost` is filled when it ends."""
    power = power or PowerModel()
    cost = Cost()
    exact_peak = _reset_peak_rss()
    gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    counter = _gpu_energy_counter() if gpu else None
    gpu_start = counter() if counter else 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield cost
    finally:
        cost.wall_seconds = time.perf_counter() - wall
        cost.cpu_seconds = time.process_time() - cpu
        cost.peak_rss_mb = _peak_rss_mb()
        joules = cost.cpu_seconds * power.cpu_watts_per_core
        joules += cost.peak_rss_mb / 1024 * power.memory_watts_per_gb * cost.wall_seconds
        method = f"CPU time x {power.cpu_watts_per_core} W/core + peak RSS x {power.memory_watts_per_gb} W/GB"
        if not exact_peak:
            method += " (peak RSS: process peak so far)"
        if gpu or (torch.cuda.is_available() and torch.cuda.is_initialized()):
            cost.gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
            if counter:
                cost.gpu_joules = (counter() - gpu_start) / 1000
                method += " + GPU energy counter"
            else:
                cost.gpu_joules = cost.wall_seconds * power.gpu_watts
                method += f" + wall time x {power.gpu_watts} W GPU"
            joules += cost.gpu_joules
        cost.energy_wh = joules / 3600
        cost.energy_method = method
