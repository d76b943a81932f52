"""seeded(): reproducible draws inside, the caller's generator state restored outside."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medfm.seeding import seeded


def test_seeded_blocks_repeat_and_leave_the_callers_generator_where_it_was():
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    with seeded(0):
        first = torch.rand(3)
    with seeded(0):
        second = torch.rand(3)
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(3), expected_next)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_only_block_does_not_start_cuda():
    script = (
        "import torch\nfrom medfm.seeding import seeded\n"
        "with seeded(0):\n    torch.rand(3)\nprint(torch.cuda.is_initialized())"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
