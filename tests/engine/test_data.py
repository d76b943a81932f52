import numpy as np
import pytest

from medfm.engine.data import ResumableSampler, sample_seed


def test_ranks_get_disjoint_equal_shares():
    shares = [list(ResumableSampler(103, 5, seed=3, rank=r, world_size=3)) for r in range(3)]
    indices = [[i for i, _ in share] for share in shares]
    assert all(len(s) == 30 for s in indices)  # 103 // (5 * 3) = 6 batches of 5 per rank
    assert len(set().union(*map(set, indices))) == 90


def test_position_resumes_the_same_order():
    sampler = ResumableSampler(50, 4, seed=1)
    sampler.set_position(2, 0)
    whole = list(sampler)
    sampler.set_position(2, 5)
    assert list(sampler) == whole[20:]
    assert len(sampler) == len(whole) - 20


def test_epochs_shuffle_differently_and_seeds_are_per_sample():
    sampler = ResumableSampler(40, 4, seed=0)
    first, second = sampler.epoch_indices(0), sampler.epoch_indices(1)
    assert not np.array_equal(first, second)
    assert sample_seed(0, 0, 5) != sample_seed(0, 1, 5) != sample_seed(0, 0, 6)
    assert sample_seed(0, 0, 5) == sample_seed(0, 0, 5)


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fill one batch"):
        ResumableSampler(7, 4, world_size=2)
