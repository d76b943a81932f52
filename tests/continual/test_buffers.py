"""Rehearsal buffers: what they keep, within which budget, how they sample and how they resume."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load, save

from medfm.continual.buffers import (
    BUFFERS,
    BufferBudget,
    ClassBalancedBuffer,
    ReplayBuffer,
    ReservoirBuffer,
    parse_bytes,
)

IMAGE = (1, 32, 32)  # float32: 4096 bytes, plus 8 for an int64 label
SIGNAL = (1, 3000)  # float32: 12000 bytes, plus 8


def batch(ids, shape=IMAGE, key="image", labels=None, with_logits=False):
    """Examples whose every tensor carries the example's id, so rows can be checked for alignment."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    inputs = {key: ids.float().view(-1, *[1] * len(shape)).expand(-1, *shape).clone()}
    y = ids.clone() if labels is None else torch.as_tensor(labels, dtype=torch.int64)
    logits = ids.float().view(-1, 1).expand(-1, 3).clone() if with_logits else None
    return inputs, y, logits


def offer(buffer, experience, ids, step=64, labels=None, **kwargs):
    ids = list(ids)
    for start in range(0, len(ids), step):
        chunk = None if labels is None else labels[start : start + step]
        inputs, y, logits = batch(ids[start : start + step], labels=chunk, **kwargs)
        buffer.add(experience, inputs, y, logits)


def everything(buffer: ReplayBuffer):
    return buffer.sample(len(buffer), torch.Generator().manual_seed(0))


def kept_ids(buffer: ReplayBuffer, key="image") -> dict[int, list[int]]:
    """Example ids kept per experience, sorted."""
    out = {}
    for part in everything(buffer):
        first = next(iter(part.inputs.values()))
        out[part.experience] = sorted(first.flatten(1)[:, 0].long().tolist())
    return out


def stored_bytes(buffer: ReplayBuffer) -> int:
    state = buffer.state_dict()
    return sum(v.nbytes for k, v in state.items() if k.startswith("ex/") and not k.endswith("/group"))


# -- budgets and sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"examples": 0, "bytes": 0}, {"examples": -1}, {"bytes": -5, "examples": 3}, {"examples": 2.5}],
)
def test_bad_budgets_raise(kwargs):
    with pytest.raises(ValueError):
        BufferBudget(**kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512KB", 512_000),
        ("10 MB", 10_000_000),
        ("1.5GiB", 1_610_612_736),
        (2048, 2048),
        ("2048", 2048),
        (" 3 b ", 3),
        ("0.5 kib", 512),
        ("2TB", 2 * 10**12),
        ("1.0001KB", 1000),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "ten MB", "5 XB", "-1KB", "1e3", "1.2.3MB", "MB", -5, 1.5, None, True])
def test_parse_bytes_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_registry_names_both_buffers():
    assert dict(BUFFERS) == {"reservoir": ReservoirBuffer, "class_balanced": ClassBalancedBuffer}


# -- reservoir -----------------------------------------------------------------------------------------


def test_reservoir_keeps_each_offer_with_equal_chance():
    capacity, offered, runs = 10, 100, 400
    kept = torch.zeros(offered)
    for seed in range(runs):
        buffer = ReservoirBuffer(BufferBudget(examples=capacity), seed=seed)
        offer(buffer, 0, range(offered), step=7)
        assert len(buffer) == capacity
        for (_, key), count in buffer.counts().items():
            kept[int(key)] += count
    expected = runs * capacity / offered
    chi2 = float(((kept - expected) ** 2 / expected).sum())
    # 99 degrees of freedom: mean 99, sd 14; a biased reservoir (say, keeping the last ones) scores thousands
    assert chi2 < 99 + 5 * 14, chi2
    assert (kept - expected).abs().max() < 5 * (expected * 0.9) ** 0.5


@pytest.mark.parametrize("step", [2, 6])
def test_reservoir_small_stream_has_exact_odds(step):
    """Three kept of six offered: each is kept half the time, however the offers are batched."""
    runs = 3000
    kept = torch.zeros(6)
    for seed in range(runs):
        buffer = ReservoirBuffer(BufferBudget(examples=3), seed=seed)
        offer(buffer, 0, range(6), step=step)
        for (_, key), count in buffer.counts().items():
            kept[int(key)] += count
    # sd is 27 of 1500; an off-by-one in the odds moves the first three to 1200
    assert (kept - runs / 2).abs().max() < 5 * 27.4, kept


@pytest.mark.parametrize("budget", [BufferBudget(examples=50), BufferBudget(bytes=50 * 4104)])
def test_reservoir_fills_then_stays_at_its_cap(budget):
    buffer = ReservoirBuffer(budget, seed=1)
    offer(buffer, 0, range(30))
    assert len(buffer) == 30 and kept_ids(buffer)[0] == list(range(30))
    offer(buffer, 0, range(30, 1000))
    assert len(buffer) == 50
    assert buffer.nbytes == 50 * 4104 == stored_bytes(buffer)
    assert buffer.seen == 1000


def test_reservoir_byte_budget_with_two_modalities():
    budget = BufferBudget(examples=15, bytes=100_000)
    buffer = ReservoirBuffer(budget, seed=3)
    for round_ in range(20):
        offer(buffer, 0, range(round_ * 10, round_ * 10 + 10), step=5)
        offer(buffer, 1, range(round_ * 4, round_ * 4 + 4), shape=SIGNAL, key="signal")
        assert len(buffer) <= 15 and buffer.nbytes <= 100_000
        assert buffer.nbytes == stored_bytes(buffer)
    kept = kept_ids(buffer)
    assert set(kept) == {0, 1}
    assert buffer.nbytes > 100_000 - 12_008  # evictions stop as soon as the newcomer fits


def test_reservoir_never_keeps_an_example_larger_than_the_byte_budget():
    buffer = ReservoirBuffer(BufferBudget(bytes=10_000), seed=0)
    offer(buffer, 1, range(6), shape=SIGNAL, key="signal")
    offer(buffer, 0, range(3))
    assert buffer.skipped_too_large == 6 and buffer.seen == 9
    assert list(kept_ids(buffer)) == [0] and len(buffer) == 2 and buffer.nbytes == 2 * 4104


def test_same_seed_and_offers_give_identical_buffers():
    def run(seed):
        buffer = ReservoirBuffer(BufferBudget(examples=20, bytes=60_000), seed=seed)
        offer(buffer, 0, range(300), step=13)
        offer(buffer, 1, range(40), shape=SIGNAL, key="signal", step=9)
        return kept_ids(buffer)

    assert run(5) == run(5)
    assert run(5) != run(6)


# -- class balanced ------------------------------------------------------------------------------------


def shuffled_labels(per_class: dict[int, int], seed: int) -> list[int]:
    labels = torch.cat([torch.full((n,), c) for c, n in per_class.items()])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))].tolist()


def offer_labels(buffer, experience, labels, first_id=0, step=32):
    for start in range(0, len(labels), step):
        chunk = labels[start : start + step]
        ids = range(first_id + start, first_id + start + len(chunk))
        inputs, y, _ = batch(ids, labels=chunk)
        buffer.add(experience, inputs, y)


def test_class_balanced_evens_out_imbalanced_classes_and_keeps_old_experiences():
    buffer = ClassBalancedBuffer(BufferBudget(examples=60), seed=0)
    offer_labels(buffer, 0, shuffled_labels({0: 300, 1: 60, 2: 30}, seed=0))
    counts = buffer.counts()
    assert set(counts) == {(0, "0"), (0, "1"), (0, "2")}
    assert max(counts.values()) - min(counts.values()) <= 1 and sum(counts.values()) == 60

    offer_labels(buffer, 1, shuffled_labels({0: 200, 1: 150}, seed=1), first_id=1000)
    counts = buffer.counts()
    assert set(counts) == {(0, "0"), (0, "1"), (0, "2"), (1, "0"), (1, "1")}
    assert max(counts.values()) - min(counts.values()) <= 1 and sum(counts.values()) == 60


def test_class_balanced_small_groups_keep_everything():
    buffer = ClassBalancedBuffer(BufferBudget(examples=30), seed=2)
    offer_labels(buffer, 0, shuffled_labels({0: 100, 1: 4, 2: 100}, seed=2))
    counts = buffer.counts()
    assert counts[(0, "1")] == 4
    assert abs(counts[(0, "0")] - counts[(0, "2")]) <= 1 and sum(counts.values()) == 30


def test_class_balanced_refuses_the_strictly_largest_group():
    buffer = ClassBalancedBuffer(BufferBudget(examples=4), seed=0)
    offer_labels(buffer, 0, [0, 0, 0, 0])
    offer_labels(buffer, 0, [0, 0], first_id=10)
    assert kept_ids(buffer) == {0: [0, 1, 2, 3]}
    offer_labels(buffer, 0, [1], first_id=20)
    assert buffer.counts() == {(0, "0"): 3, (0, "1"): 1}
    assert 20 in kept_ids(buffer)[0]


def test_class_balanced_byte_budget_with_two_modalities():
    buffer = ClassBalancedBuffer(BufferBudget(bytes=150_000), seed=4)
    for round_ in range(10):
        offer(buffer, 0, range(round_ * 20, round_ * 20 + 20), labels=[i % 2 for i in range(20)])
        offer(buffer, 1, range(round_ * 5, round_ * 5 + 5), shape=SIGNAL, key="signal", labels=[0] * 5)
        assert buffer.nbytes <= 150_000 and buffer.nbytes == stored_bytes(buffer)
    assert set(buffer.counts()) == {(0, "0"), (0, "1"), (1, "0")}


def test_multi_hot_labels_group_by_their_positive_classes():
    buffer = ClassBalancedBuffer(BufferBudget(examples=100))
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    buffer.add(2, {"series": torch.zeros(4, 48, 70)}, y)
    assert buffer.counts() == {(2, "0+2"): 2, (2, ""): 1, (2, "1"): 1}


# -- sampling, logits, copies ------------------------------------------------------------------------


def two_modality_buffer(with_logits=False) -> ReservoirBuffer:
    buffer = ReservoirBuffer(BufferBudget(examples=1000))
    offer(buffer, 0, range(30), step=8, with_logits=with_logits)
    offer(buffer, 1, range(100, 130), shape=SIGNAL, key="signal", step=8, with_logits=with_logits)
    return buffer


def test_sample_groups_by_experience_without_replacement():
    buffer = two_modality_buffer()
    parts = buffer.sample(20, torch.Generator().manual_seed(7))
    assert [p.experience for p in parts] == [0, 1]
    assert sum(len(p.y) for p in parts) == 20
    image, signal = parts
    assert image.inputs["image"].shape == (len(image.y), *IMAGE) and set(image.inputs) == {"image"}
    assert signal.inputs["signal"].shape == (len(signal.y), *SIGNAL)
    assert image.logits is None
    rows = torch.cat([p.rows for p in parts])
    assert len(set(rows.tolist())) == 20 and rows.dtype == torch.int64
    for part in parts:
        assert torch.equal(next(iter(part.inputs.values())).flatten(1)[:, 0].long(), part.y)

    again = buffer.sample(20, torch.Generator().manual_seed(7))
    assert all(torch.equal(a.rows, b.rows) and torch.equal(a.y, b.y) for a, b in zip(parts, again))
    other = buffer.sample(20, torch.Generator().manual_seed(8))
    assert not torch.equal(torch.cat([p.rows for p in other]), rows)


def test_sample_more_than_kept_returns_everything_once():
    buffer = two_modality_buffer()
    parts = buffer.sample(1000, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([p.y for p in parts]).tolist()) == list(range(30)) + list(range(100, 130))
    assert sorted(torch.cat([p.rows for p in parts]).tolist()) == list(range(60))
    assert buffer.sample(0, torch.Generator()) == []
    assert ReservoirBuffer(BufferBudget(examples=3)).sample(5, torch.Generator()) == []


def test_logits_stay_aligned_through_evictions_and_updates():
    buffer = ReservoirBuffer(BufferBudget(examples=25), seed=9)
    offer(buffer, 0, range(500), step=17, with_logits=True)
    offer(buffer, 1, range(1000, 1200), step=17, with_logits=True, shape=SIGNAL, key="signal")
    for part in everything(buffer):
        assert part.logits.shape == (len(part.y), 3)
        assert torch.equal(part.logits[:, 0].long(), part.y)

    picked = buffer.sample(10, torch.Generator().manual_seed(1))
    for part in picked:
        buffer.update_logits(part.rows, -part.y.float().view(-1, 1).expand(-1, 3))
    changed = {int(y) for part in picked for y in part.y}
    for part in everything(buffer):
        for y, logit in zip(part.y.tolist(), part.logits[:, 0].tolist()):
            assert logit == (-y if y in changed else y)


def test_buffer_keeps_its_own_detached_copies():
    image = torch.ones(4, *IMAGE, requires_grad=True)
    y = torch.arange(4)
    buffer = ReservoirBuffer(BufferBudget(examples=10))
    buffer.add(0, {"image": image}, y)
    y.zero_()
    with torch.no_grad():
        image.mul_(5)
    (part,) = everything(buffer)
    assert not part.inputs["image"].requires_grad
    assert part.inputs["image"].eq(1).all() and sorted(part.y.tolist()) == [0, 1, 2, 3]


# -- validation ----------------------------------------------------------------------------------------


def test_mismatched_first_dimensions_raise():
    buffer = ReservoirBuffer(BufferBudget(examples=10))
    with pytest.raises(ValueError, match="first dimension"):
        buffer.add(0, {"image": torch.zeros(3, *IMAGE)}, torch.zeros(4, dtype=torch.int64))


def test_shape_change_within_an_experience_names_key_and_shapes():
    buffer = ReservoirBuffer(BufferBudget(examples=10))
    buffer.add(0, {"image": torch.zeros(2, *IMAGE)}, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"'image'.*\(1, 28, 28\).*\(1, 32, 32\)"):
        buffer.add(0, {"image": torch.zeros(2, 1, 28, 28)}, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="'mask'"):
        buffer.add(0, {"mask": torch.zeros(2, *IMAGE)}, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="logits"):
        buffer.add(0, {"image": torch.zeros(2, *IMAGE)}, torch.zeros(2, dtype=torch.int64), torch.zeros(2, 3))
    buffer.add(1, {"image": torch.zeros(2, 1, 28, 28)}, torch.zeros(2, dtype=torch.int64))  # other experience
    assert len(buffer) == 4


def test_empty_batch_is_a_no_op():
    buffer = ReservoirBuffer(BufferBudget(examples=10))
    buffer.add(0, {"image": torch.zeros(0, 1, 28, 28)}, torch.zeros(0, dtype=torch.int64))
    assert len(buffer) == 0 and buffer.seen == 0 and buffer.counts() == {}
    buffer.add(0, {"image": torch.zeros(2, *IMAGE)}, torch.zeros(2, dtype=torch.int64))
    assert len(buffer) == 2


# -- checkpoints -----------------------------------------------------------------------------------------


def through_checkpoint(state: dict) -> dict:
    """What a training checkpoint gives back: tensors via safetensors, the rest via JSON."""
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    plain = {k: v for k, v in state.items() if not torch.is_tensor(v)}
    return {**json.loads(json.dumps(plain)), **load(save(tensors))}


@pytest.mark.parametrize("kind", sorted(BUFFERS))
def test_state_dict_round_trip_gives_identical_future(kind):
    budget = BufferBudget(examples=12, bytes=80_000)
    original = BUFFERS[kind](budget, seed=11)
    offer(original, 0, range(200), step=9, with_logits=True, labels=[i % 3 for i in range(200)])
    offer(original, 1, range(30), step=7, with_logits=True, shape=SIGNAL, key="signal")
    offer(original, 2, range(5), labels=[0] * 5)

    restored = BUFFERS[kind](budget, seed=999)
    restored.load_state_dict(through_checkpoint(original.state_dict()))
    assert kept_ids(restored) == kept_ids(original)
    assert restored.counts() == original.counts() and restored.nbytes == original.nbytes
    assert restored.seen == original.seen

    for buffer in (original, restored):
        offer(buffer, 2, range(5, 300), step=11, labels=[i % 2 for i in range(5, 300)])
        offer(buffer, 0, range(200, 260), step=9, with_logits=True, labels=[i % 3 for i in range(200, 260)])
    a, b = original.state_dict(), restored.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if torch.is_tensor(a[key]) else a[key] == b[key], key


def test_state_dict_keeps_an_emptied_experience():
    buffer = ReservoirBuffer(BufferBudget(examples=3), seed=0)
    offer(buffer, 0, range(3))
    offer(buffer, 1, range(2000), shape=SIGNAL, key="signal", step=500)
    restored = ReservoirBuffer(BufferBudget(examples=3))
    restored.load_state_dict(through_checkpoint(buffer.state_dict()))
    assert kept_ids(restored) == kept_ids(buffer)
    with pytest.raises(ValueError, match="'image'"):
        restored.add(0, {"image": torch.zeros(1, 1, 28, 28)}, torch.zeros(1, dtype=torch.int64))


def test_loading_into_another_kind_or_budget_raises():
    state = two_modality_buffer().state_dict()
    with pytest.raises(ValueError, match="ReservoirBuffer"):
        ClassBalancedBuffer(BufferBudget(examples=1000)).load_state_dict(state)
    with pytest.raises(ValueError, match="budget"):
        ReservoirBuffer(BufferBudget(examples=10)).load_state_dict(state)


# -- speed ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BUFFERS))
def test_fifty_thousand_small_examples_add_quickly(kind):
    buffer = BUFFERS[kind](BufferBudget(examples=2000), seed=0)
    images = torch.randn(64, *IMAGE)
    labels = torch.randint(0, 10, (50_000,))
    began = time.perf_counter()
    for start in range(0, 50_000, 64):
        y = labels[start : start + 64]
        buffer.add(start // 10_000, {"image": images[: len(y)]}, y)
    assert time.perf_counter() - began < 15  # about half a second here; generous for slow runners
    assert len(buffer) == 2000 and buffer.seen == 50_000
