"""Rehearsal memories: copies of past experiences' examples kept within a budget of examples and of bytes.

A buffer stores each experience's examples as stacked CPU tensors (inputs, labels and, for DER++, the
model's logits), so what it reports in :attr:`ReplayBuffer.nbytes` is what a site would really keep.
Subclasses decide which examples stay: :class:`ReservoirBuffer` keeps a uniform sample of the stream,
:class:`ClassBalancedBuffer` equal room per (experience, class). All choices come from the buffer's own
seeded generator, so a run is reproducible and a checkpoint can carry the buffer (:meth:`state_dict`).

Written here because no runtime dependency offers them; avalanche (used by the tests only) has buffers of
datasets, without a byte budget or mixed modalities.
"""

from __future__ import annotations

import math
import operator
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

GROUP = "group"  # state-dict name of the per-row group ids (bookkeeping, not in the byte budget)
INPUTS = "inputs/"

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(text: str | int) -> int:
    """Bytes in ``"512KB"``, ``"10 MB"``, ``"1.5GiB"`` or an int (KB = 1000, KiB = 1024); rounds down."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a size in bytes cannot be negative, got {text}")
        return text
    if not isinstance(text, str):
        raise ValueError(f"a size must be an int or text like '10 MB', got {type(text).__name__} {text!r}")
    match = _SIZE.match(text)
    if match is None or match.group(2).lower() not in _UNITS:
        units = ", ".join(u.upper() if u[-2:] != "ib" else u[:-2].upper() + "iB" for u in _UNITS if u)
        raise ValueError(f"cannot read {text!r} as a size: expected a number and one of {units}")
    return int(Fraction(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass
class BufferBudget:
    """The most a buffer may keep: ``examples`` and ``bytes`` of stored tensors; 0 means no cap on that."""

    examples: int = 0
    bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("examples", "bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"budget {name} must be a whole number >= 0, got {value!r}")
        if self.examples == 0 and self.bytes == 0:
            raise ValueError("a buffer budget needs a cap: set examples or bytes (or both) above 0")


@dataclass
class Part:
    """Sampled examples of one experience, stacked; ``rows`` are their positions in the buffer."""

    experience: int
    inputs: dict[str, Tensor]
    y: Tensor
    logits: Tensor | None
    rows: Tensor


class _Store:
    """One experience's examples in preallocated stacked tensors; rows ``[0, size)`` hold data.

    Preallocation with swap-removal keeps adding and evicting O(one row), which a stream of tens of
    thousands of small examples needs; growth stops at the most rows the budget could ever allow.
    Group bookkeeping stays in plain lists, since touching a tensor per decision costs microseconds.
    """

    def __init__(self, template: dict[str, Tensor], max_rows: int) -> None:
        self.fields = {name: torch.empty((0, *t.shape[1:]), dtype=t.dtype) for name, t in template.items()}
        self.size = 0
        self.max_rows = max_rows
        self.row_bytes = sum(math.prod(t.shape[1:]) * t.element_size() for t in self.fields.values())
        self.groups: list[int] = []  # row -> group id
        self.members: dict[int, list[int]] = {}  # group id -> its rows, in no particular order
        self.where: list[int] = []  # row -> its index in members[groups[row]]

    @property
    def capacity(self) -> int:
        return self.fields["y"].shape[0]

    def view(self, name: str) -> Tensor:
        return self.fields[name][: self.size]

    def append(self, batch: dict[str, Tensor], groups: list[int], start: int, stop: int) -> None:
        count = stop - start
        self._resize_for(self.size + count)
        for name, tensor in self.fields.items():
            if count == 1:
                tensor[self.size].copy_(batch[name][start])
            else:
                tensor[self.size : self.size + count].copy_(batch[name][start:stop])
        for row, group in enumerate(groups[start:stop], start=self.size):
            self.groups.append(group)
            self.where.append(0)
            self._join(row, group)
        self.size += count

    def write(self, row: int, batch: dict[str, Tensor], groups: list[int], index: int) -> None:
        for name, tensor in self.fields.items():
            tensor[row].copy_(batch[name][index])
        self._leave(row)
        self.groups[row] = groups[index]
        self._join(row, groups[index])

    def remove(self, row: int) -> None:
        last = self.size - 1
        self._leave(row)
        if row != last:
            for tensor in self.fields.values():
                tensor[row].copy_(tensor[last])
            moved = self.groups[last]
            self.members[moved][self.where[last]] = row
            self.groups[row], self.where[row] = moved, self.where[last]
        self.groups.pop()
        self.where.pop()
        self.size = last
        if self.capacity > 64 and self.size <= self.capacity // 4:
            self._reallocate(max(2 * self.size, 16))

    def _join(self, row: int, group: int) -> None:
        rows = self.members.setdefault(group, [])
        self.where[row] = len(rows)
        rows.append(row)

    def _leave(self, row: int) -> None:
        rows = self.members[self.groups[row]]
        index, tail = self.where[row], rows.pop()
        if tail != row:
            rows[index] = tail
            self.where[tail] = index

    def _resize_for(self, rows: int) -> None:
        if rows > self.capacity:
            self._reallocate(max(rows, min(max(2 * self.capacity, 16), self.max_rows)))

    def _reallocate(self, rows: int) -> None:
        for name, tensor in self.fields.items():
            grown = torch.empty((rows, *tensor.shape[1:]), dtype=tensor.dtype)
            grown[: self.size].copy_(tensor[: self.size])
            self.fields[name] = grown


class ReplayBuffer:
    """Storage, accounting and sampling of kept examples; subclasses choose which offered examples to keep."""

    def __init__(self, budget: BufferBudget, seed: int = 0) -> None:
        self.budget = budget
        self._reset(seed)

    def _reset(self, seed: int) -> None:
        self.seed = seed
        self.seen = 0  # examples ever offered
        self.skipped_too_large = 0  # offered examples bigger than the whole byte budget
        self._generator = torch.Generator().manual_seed(seed)
        self._stores: dict[int, _Store] = {}  # in the order experiences were first offered
        self._groups: list[tuple[int, str]] = []  # (experience, class key) by id, in the order first seen
        self._group_ids: dict[tuple[int, str], int] = {}
        self._group_counts: list[int] = []
        self._count = 0
        self._nbytes = 0

    # -- public API ----------------------------------------------------------------------------------

    def add(
        self, experience: int, inputs: dict[str, Tensor], y: Tensor, logits: Tensor | None = None
    ) -> None:
        """Offer N examples of ``experience`` (first dimension of every tensor), in the order given."""
        experience = operator.index(experience)
        offered = self._batch(inputs, y, logits)
        if offered is None:
            return
        batch, keys = offered
        store = self._store_for(experience, batch)
        groups = [self._group_id(experience, key) for key in keys]
        self._offer(store, batch, groups)
        self.seen += len(groups)

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of the stored examples' tensors (inputs, y and logits) now."""
        return self._nbytes

    def counts(self) -> dict[tuple[int, str], int]:
        """Examples kept per (experience, class key), for groups with at least one kept.

        The class key is ``str(index)``, or for multi-hot ``y`` the sorted indices of labels >= 0.5 (nonzero
        for integer ``y``) joined by "+", "" for none.
        """
        return {self._groups[g]: c for g, c in enumerate(self._group_counts) if c > 0}

    def sample(self, n: int, generator: torch.Generator) -> list[Part]:
        """``n`` examples drawn uniformly without replacement (all if fewer), a :class:`Part` per experience.

        ``rows`` stay valid until the next :meth:`add`.
        """
        if n < 0:
            raise ValueError(f"cannot sample a negative number of examples ({n})")
        if n == 0 or self._count == 0:
            return []
        picks = torch.randperm(self._count, generator=generator)[: min(n, self._count)]
        parts = []
        for experience, store, offset in self._segments():
            rows = picks[(picks >= offset) & (picks < offset + store.size)]
            if len(rows):
                parts.append(self._part(experience, store, rows, rows - offset))
        return parts

    def update_logits(self, rows: Tensor, logits: Tensor) -> None:
        """Replace the stored logits at buffer positions ``rows`` (as given by :meth:`sample`)."""
        rows = torch.as_tensor(rows, dtype=torch.int64).flatten()
        if logits.shape[0] != rows.shape[0]:
            raise ValueError(f"{rows.shape[0]} rows but {logits.shape[0]} logits")
        if len(rows) and (rows.min() < 0 or rows.max() >= self._count):
            raise ValueError(f"rows must lie in [0, {self._count})")
        logits = logits.detach().to("cpu")
        for experience, store, offset in self._segments():
            mask = (rows >= offset) & (rows < offset + store.size)
            if not mask.any():
                continue
            if "logits" not in store.fields:
                raise ValueError(f"experience {experience} was stored without logits")
            store.fields["logits"].index_copy_(
                0, rows[mask] - offset, logits[mask].to(store.fields["logits"])
            )

    def state_dict(self) -> dict[str, Any]:
        """Tensors under flat names (``ex/<k>/inputs/<key>``, ``ex/<k>/y``, ...), the rest JSON-safe."""
        state: dict[str, Any] = {
            "kind": type(self).__name__,
            "budget": {"examples": self.budget.examples, "bytes": self.budget.bytes},
            "seed": self.seed,
            "seen": self.seen,
            "skipped_too_large": self.skipped_too_large,
            "experiences": list(self._stores),
            "groups": [[experience, key] for experience, key in self._groups],
            "rng": self._generator.get_state(),
        }
        for experience, store in self._stores.items():
            for name in store.fields:
                state[f"ex/{experience}/{name}"] = store.view(name).clone()
            state[f"ex/{experience}/{GROUP}"] = torch.tensor(store.groups, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Become the buffer that :meth:`state_dict` described, future random choices included."""
        if state["kind"] != type(self).__name__:
            raise ValueError(f"state is of a {state['kind']}, not a {type(self).__name__}")
        budget = {"examples": self.budget.examples, "bytes": self.budget.bytes}
        if dict(state["budget"]) != budget:
            raise ValueError(f"state was saved with budget {state['budget']}, this buffer has {budget}")
        self._reset(int(state["seed"]))
        self.seen = int(state["seen"])
        self.skipped_too_large = int(state["skipped_too_large"])
        for experience, key in state["groups"]:
            self._group_id(int(experience), str(key))
        for experience in state["experiences"]:
            prefix = f"ex/{experience}/"
            fields = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            groups = fields.pop(GROUP).tolist()
            store = self._store_for(int(experience), fields)
            self._append(store, fields, groups, 0, len(groups))
        self._generator.set_state(state["rng"])

    # -- for subclasses ------------------------------------------------------------------------------

    def _offer(self, store: _Store, batch: dict[str, Tensor], groups: list[int]) -> None:
        """Keep, replace or skip each example of ``batch`` (one experience, whose rows go to ``store``):
        appended while there is room, then each one left to the subclass's rule for a full buffer."""
        n = len(groups)
        when_full = self._rule_when_full(n)
        if self._too_large(store.row_bytes):
            self.skipped_too_large += n
            return
        index = 0
        while index < n:
            room = min(self._room(store.row_bytes), n - index)
            if room > 0:
                self._append(store, batch, groups, index, index + room)
                index += room
                continue
            when_full(store, batch, groups, index)
            index += 1

    def _rule_when_full(self, offered: int) -> Callable[[_Store, dict[str, Tensor], list[int], int], None]:
        """What to do with example ``index`` of this offer of ``offered`` examples when the buffer is full."""
        raise NotImplementedError

    def _room(self, row_bytes: int) -> int:
        """How many more examples of ``row_bytes`` each fit now without evicting."""
        room = sys.maxsize
        if self.budget.examples:
            room = self.budget.examples - self._count
        if self.budget.bytes and row_bytes:
            room = min(room, (self.budget.bytes - self._nbytes) // row_bytes)
        return max(room, 0)

    def _too_large(self, row_bytes: int) -> bool:
        return 0 < self.budget.bytes < row_bytes

    def _append(
        self, store: _Store, batch: dict[str, Tensor], groups: list[int], start: int, stop: int
    ) -> None:
        store.append(batch, groups, start, stop)
        for group in groups[start:stop]:
            self._group_counts[group] += 1
        self._count += stop - start
        self._nbytes += (stop - start) * store.row_bytes

    def _overwrite(
        self, store: _Store, row: int, batch: dict[str, Tensor], groups: list[int], index: int
    ) -> None:
        self._group_counts[store.groups[row]] -= 1
        self._group_counts[groups[index]] += 1
        store.write(row, batch, groups, index)

    def _remove(self, store: _Store, row: int) -> None:
        self._group_counts[store.groups[row]] -= 1
        store.remove(row)
        self._count -= 1
        self._nbytes -= store.row_bytes

    def _locate(self, position: int) -> tuple[_Store, int]:
        for _, store, offset in self._segments():
            if position < offset + store.size:
                return store, position - offset
        raise IndexError(f"position {position} is beyond the buffer's {self._count} examples")

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self._generator))

    # -- internals -----------------------------------------------------------------------------------

    def _segments(self) -> Iterator[tuple[int, _Store, int]]:
        offset = 0
        for experience, store in self._stores.items():
            yield experience, store, offset
            offset += store.size

    def _part(self, experience: int, store: _Store, rows: Tensor, local: Tensor) -> Part:
        def take(name: str) -> Tensor:
            return store.view(name).index_select(0, local)

        inputs = {name[len(INPUTS) :]: take(name) for name in store.fields if name.startswith(INPUTS)}
        logits = take("logits") if "logits" in store.fields else None
        return Part(experience=experience, inputs=inputs, y=take("y"), logits=logits, rows=rows)

    def _batch(
        self, inputs: dict[str, Tensor], y: Tensor, logits: Tensor | None
    ) -> tuple[dict[str, Tensor], list[str]] | None:
        """The offered tensors under storage names, detached on CPU, and their class keys; None when empty."""
        if not isinstance(inputs, dict) or not all(isinstance(k, str) for k in inputs):
            raise ValueError("inputs must be a dict of tensors keyed by name")
        named = {f"{INPUTS}{k}": v for k, v in inputs.items()}
        named["y"] = y
        if logits is not None:
            named["logits"] = logits
        for name, tensor in named.items():
            if not isinstance(tensor, Tensor) or tensor.ndim == 0:
                raise ValueError(f"{_label(name)} must be a tensor with a first (example) dimension")
        sizes = {name.removeprefix(INPUTS): t.shape[0] for name, t in named.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"every tensor needs the same first dimension, got {sizes}")
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be [N] class indices or [N, K] multi-hot, got shape {tuple(y.shape)}")
        if y.shape[0] == 0:
            return None
        batch = {name: t.detach().to("cpu") for name, t in named.items()}
        return batch, _class_keys(batch["y"])

    def _store_for(self, experience: int, batch: dict[str, Tensor]) -> _Store:
        store = self._stores.get(experience)
        if store is None:
            store = _Store(batch, max_rows=self._max_rows(batch))
            self._stores[experience] = store
            return store
        if set(store.fields) != set(batch):
            raise ValueError(
                f"experience {experience}: offered {', '.join(sorted(map(_label, batch)))} "
                f"but earlier batches had {', '.join(sorted(map(_label, store.fields)))}"
            )
        for name, tensor in batch.items():
            kept = store.fields[name]
            if tensor.shape[1:] != kept.shape[1:] or tensor.dtype != kept.dtype:
                new, old = tuple(tensor.shape[1:]), tuple(kept.shape[1:])
                raise ValueError(
                    f"experience {experience}: {_label(name)} has per-example shape {new} ({tensor.dtype}), "
                    f"earlier batches {old} ({kept.dtype})"
                )
        return store

    def _max_rows(self, batch: dict[str, Tensor]) -> int:
        row_bytes = sum(math.prod(t.shape[1:]) * t.element_size() for t in batch.values())
        caps = [self.budget.examples] if self.budget.examples else []
        if self.budget.bytes and row_bytes:
            caps.append(self.budget.bytes // row_bytes)
        return min(caps) if caps else sys.maxsize

    def _group_id(self, experience: int, key: str) -> int:
        group = self._group_ids.get((experience, key))
        if group is None:
            group = len(self._groups)
            self._groups.append((experience, key))
            self._group_ids[(experience, key)] = group
            self._group_counts.append(0)
        return group


class ReservoirBuffer(ReplayBuffer):
    """Vitter's algorithm R over every example ever offered: after n offers each has the same chance to stay.

    With a byte budget and examples of different sizes, a kept newcomer evicts random examples until it fits.
    """

    def _rule_when_full(self, offered: int):
        # One draw per offered example whatever happens, so decisions depend only on the offers.
        draws = torch.rand(offered, dtype=torch.float64, generator=self._generator).tolist()

        def keep_with_reservoir_odds(store, batch, groups, index):
            slot = int(draws[index] * (self.seen + index + 1))
            if slot < len(self):
                self._replace(slot, store, batch, groups, index)

        return keep_with_reservoir_odds

    def _replace(
        self, slot: int, store: _Store, batch: dict[str, Tensor], groups: list[int], index: int
    ) -> None:
        victim, row = self._locate(slot)
        if victim is store:  # same experience, same size: the newcomer takes the victim's row
            self._overwrite(store, row, batch, groups, index)
            return
        self._remove(victim, row)
        while self._room(store.row_bytes) == 0:
            self._remove(*self._locate(self._randint(len(self))))
        self._append(store, batch, groups, index, index + 1)


class ClassBalancedBuffer(ReplayBuffer):
    """Equal room per (experience, class) group seen so far.

    When full, a random example of the largest group is evicted (ties: the newcomer's own group if it is
    among them, else the group seen earliest); a new example from a group that is already strictly the
    largest is not kept. Preferring the newcomer's group on ties keeps counts within one of each other.
    """

    def _rule_when_full(self, offered: int):
        def keep_unless_its_group_is_largest(store, batch, groups, index):
            if not self._strictly_largest(groups[index]):
                self._make_room_for(store, batch, groups, index)

        return keep_unless_its_group_is_largest

    def _make_room_for(self, store: _Store, batch: dict[str, Tensor], groups: list[int], index: int) -> None:
        first = True
        while first or self._room(store.row_bytes) == 0:
            largest = self._victim_group(groups[index])
            victim = self._stores[self._groups[largest][0]]
            row = self._random_row(victim, largest)
            if first and victim is store:  # same experience, same size: take the victim's row
                self._overwrite(store, row, batch, groups, index)
                return
            self._remove(victim, row)
            first = False
        self._append(store, batch, groups, index, index + 1)

    def _victim_group(self, newcomer: int) -> int:
        top = max(self._group_counts)
        if self._group_counts[newcomer] == top:
            return newcomer
        # index() finds the first, and ids follow the order groups were first seen
        return self._group_counts.index(top)

    def _strictly_largest(self, group: int) -> bool:
        counts = self._group_counts
        return counts[group] > 0 and counts[group] == max(counts) and counts.count(counts[group]) == 1

    def _random_row(self, store: _Store, group: int) -> int:
        rows = store.members[group]
        return rows[self._randint(len(rows))]


BUFFERS: dict[str, type[ReplayBuffer]] = {"reservoir": ReservoirBuffer, "class_balanced": ClassBalancedBuffer}


def _label(name: str) -> str:
    """A storage name as the caller wrote it: ``inputs/image`` -> ``'image'``."""
    return repr(name[len(INPUTS) :]) if name.startswith(INPUTS) else name


def _class_keys(y: Tensor) -> list[str]:
    """Class key per example: the index for [N] labels, sorted positive indices joined by "+" if multi-hot."""
    if y.ndim == 1:
        return [str(int(v)) for v in y.tolist()]
    positive = y >= 0.5 if y.is_floating_point() else y != 0
    return ["+".join(str(j) for j, p in enumerate(row) if p) for row in positive.tolist()]
