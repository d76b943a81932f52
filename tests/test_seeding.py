"""seeded(): reproducible draws inside, the caller's generator state restored outside."""

from __future__ import annotations

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
