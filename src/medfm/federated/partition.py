"""Federated partitions of a task's examples: which simulated client holds which example.

Examples are dealt out by subject, never one by one: all of a patient's images or windows land on one
client, as in a real federation where a patient is treated at one hospital. Splitting a patient would let
a federated model see the same person at two sites and overstate how well it generalises.

Four kinds:

- ``iid``: subjects shuffled and dealt round the clients, so clients differ only by chance.
- ``dirichlet`` (label skew): for each class, its subjects are split across clients in proportions drawn
  from Dirichlet(alpha), the per-class scheme that federated benchmarks use under the name of Hsu et al.
  (2019). Small alpha gives clients that see mostly one class; large alpha approaches ``iid``.
- ``quantity`` (quantity skew): client sizes follow a Dirichlet(beta) draw, labels stay ``iid``.
- ``natural``: one client per real site (hospital, ICU type), as given per example. Asked for more
  clients than sites, the site with the largest parts is cut into one more equal part, repeatedly: first
  the largest site into halves ("Medical ICU (1/2)", "Medical ICU (2/2)"). Asked for fewer, the two
  smallest sites are merged into one client ("<18 + unknown"), repeatedly.

Label and quantity skew are drawn over subjects, not examples, so the skew is that of patients; a
subject's label is its examples' label when constant and otherwise the largest class index (a sepsis
patient with any positive window counts as positive).

All draws use one seeded generator and depend only on the set of subjects, not on the order of the
examples, so a partition is reproducible from its :class:`PartitionConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medfm.errors import ConfigError

PARTITION_KINDS = ("iid", "dirichlet", "quantity", "natural")
MAX_DRAWS = 100  # Dirichlet label-skew draws before a min_subjects requirement is declared impossible
ALL = "all"  # name of the total row of a partition table
DPI = 110
_SPLIT_ORDER = ("train", "val", "test")


@dataclass
class PartitionConfig:
    """How to split a task's subjects across federated clients (see the module docstring for the kinds)."""

    kind: str = "iid"
    clients: int = 5  # natural: 0 means one client per site
    alpha: float = 0.5  # dirichlet: label-skew concentration (smaller is more skewed)
    beta: float = 0.5  # quantity: size-skew concentration (smaller is more skewed)
    site: str = ""  # natural: metadata column that holds each example's site (read by callers)
    min_subjects: int = 2  # fewest subjects per client (natural: per part of a split site; sites stay whole)
    seed: int = 0

    def __post_init__(self):
        if self.kind not in PARTITION_KINDS:
            raise ConfigError(f"partition kind must be one of {PARTITION_KINDS}, got {self.kind!r}")
        _check_int("clients", self.clients, 0 if self.kind == "natural" else 1)
        _check_int("min_subjects", self.min_subjects, 1)
        _check_int("seed", self.seed, 0)
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < np.inf:
                raise ConfigError(f"partition {key} must be a positive number, got {value!r}")
        if not isinstance(self.site, str):
            raise ConfigError(f"partition site must be a column name, got {self.site!r}")


def _check_int(key: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        hint = " (0 means one client per site)" if key == "clients" and least == 0 else ""
        raise ConfigError(f"partition {key} must be an integer >= {least}{hint}, got {value!r}")


@dataclass
class Partition:
    """The client of each example, and the clients' names (indexed by client)."""

    client: np.ndarray  # int64 [N]
    names: list[str]


def partition_examples(
    subjects: np.ndarray, y: np.ndarray, config: PartitionConfig, sites: np.ndarray | None = None
) -> Partition:
    """Assign every example to a client so that each subject's examples share one client.

    ``y`` holds one class index per example; ``sites`` (one per example) is needed by ``natural`` only.
    """
    subjects, y = np.asarray(subjects), np.asarray(y)
    if subjects.ndim != 1 or y.shape != subjects.shape or not len(y):
        raise ValueError(f"need one subject and one label per example, got {subjects.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    keys, inverse = np.unique(subjects, return_inverse=True)
    inverse = inverse.reshape(-1)
    rng = np.random.default_rng(config.seed)
    if config.kind == "natural":
        owner, names = _natural(keys, inverse, sites, config, rng)
    else:
        owner = _skewed(_subject_labels(inverse, y, len(keys)), config, rng)
        names = [f"client {i}" for i in range(config.clients)]
    return Partition(client=owner[inverse], names=names)


def _subject_labels(inverse: np.ndarray, y: np.ndarray, n_subjects: int) -> np.ndarray:
    """A subject's label: the largest class among its examples (their label when constant)."""
    labels = np.full(n_subjects, -1, dtype=np.int64)
    np.maximum.at(labels, inverse, y)
    return labels


# --- iid, dirichlet and quantity skew -----------------------------------------------------------------


def _skewed(labels: np.ndarray, config: PartitionConfig, rng: np.random.Generator) -> np.ndarray:
    """The client of each subject for the kinds that draw clients rather than read them."""
    needed = config.clients * config.min_subjects
    if len(labels) < needed:
        raise ConfigError(
            f"{len(labels)} subjects cannot give {config.clients} clients at least "
            f"{config.min_subjects} subjects each ({needed} needed); lower partition clients or min_subjects"
        )
    if config.kind == "iid":
        return _iid(len(labels), config.clients, rng)
    if config.kind == "dirichlet":
        return _dirichlet(labels, config, rng)
    return _quantity(len(labels), config, rng)


def _iid(n_subjects: int, clients: int, rng: np.random.Generator) -> np.ndarray:
    owner = np.empty(n_subjects, dtype=np.int64)
    owner[rng.permutation(n_subjects)] = np.arange(n_subjects) % clients
    return owner


def _dirichlet(labels: np.ndarray, config: PartitionConfig, rng: np.random.Generator) -> np.ndarray:
    """Redraw until every client holds min_subjects: a small alpha can leave a client with none."""
    for _ in range(MAX_DRAWS):
        owner = _dirichlet_draw(labels, config.clients, config.alpha, rng)
        if np.bincount(owner, minlength=config.clients).min() >= config.min_subjects:
            return owner
    raise ConfigError(
        f"no Dirichlet draw in {MAX_DRAWS} gave each of {config.clients} clients at least "
        f"{config.min_subjects} subjects (alpha={config.alpha}, {len(labels)} subjects, "
        f"{len(np.unique(labels))} classes); raise partition alpha, or lower clients or min_subjects"
    )


def _dirichlet_draw(labels: np.ndarray, clients: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    owner = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, part in enumerate(np.split(members, cuts)):
            owner[part] = client
    return owner


def _quantity(n_subjects: int, config: PartitionConfig, rng: np.random.Generator) -> np.ndarray:
    """Give each client min_subjects, then share the rest by a Dirichlet(beta) draw: never needs a redraw."""
    shares = rng.dirichlet(np.full(config.clients, config.beta))
    spare = n_subjects - config.clients * config.min_subjects
    sizes = config.min_subjects + _apportion(spare, shares)
    return np.repeat(np.arange(config.clients), sizes)[rng.permutation(n_subjects)]


def _apportion(total: int, shares: np.ndarray) -> np.ndarray:
    """Whole numbers proportional to ``shares`` that sum to ``total`` (largest remainders round up)."""
    exact = total * shares
    sizes = np.floor(exact).astype(np.int64)
    sizes[np.argsort(sizes - exact, kind="stable")[: total - sizes.sum()]] += 1
    return sizes


# --- natural sites ---------------------------------------------------------------------------------------


def _natural(
    keys: np.ndarray,
    inverse: np.ndarray,
    sites: np.ndarray | None,
    config: PartitionConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[str]]:
    """One client per site; with more clients than sites, the largest sites are split into equal parts."""
    if sites is None:
        raise ConfigError("a natural partition needs each example's site (partition site names the column)")
    sites = np.asarray(sites).astype(str)
    if sites.shape != inverse.shape:
        raise ValueError(f"need one site per example: {sites.shape} sites for {inverse.shape} examples")
    site_names, site_of_subject = _subject_sites(keys, inverse, sites)
    if config.clients:
        site_names, site_of_subject = _merge_smallest(site_names, site_of_subject, config.clients)
    sizes = np.bincount(site_of_subject, minlength=len(site_names))
    parts = _parts_per_site(site_names, sizes, config)
    owner = np.empty(len(keys), dtype=np.int64)
    names: list[str] = []
    for site, name in enumerate(site_names):
        members = rng.permutation(np.flatnonzero(site_of_subject == site))
        for i, part in enumerate(np.array_split(members, parts[site])):
            owner[part] = len(names)
            names.append(str(name) if parts[site] == 1 else f"{name} ({i + 1}/{parts[site]})")
    return owner, names


def _subject_sites(keys: np.ndarray, inverse: np.ndarray, sites: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The site names and each subject's site index; a subject seen at two sites is an error."""
    site_names, code = np.unique(sites, return_inverse=True)
    code = code.reshape(-1)
    site_of_subject = np.empty(len(keys), dtype=np.int64)
    site_of_subject[inverse] = code
    clash = np.flatnonzero(code != site_of_subject[inverse])
    if len(clash):
        first = inverse[clash[0]]
        seen = sorted(set(sites[inverse == first].tolist()))
        others = len(np.unique(inverse[clash])) - 1
        more = f" (and {others} more subjects)" if others else ""
        raise ConfigError(f"subject {keys[first].item()!r} has examples at several sites {seen}{more}")
    return site_names, site_of_subject


def _merge_smallest(
    site_names: np.ndarray, site_of_subject: np.ndarray, clients: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the two smallest sites (by subjects) into one, until there are at most ``clients`` sites."""
    names = [str(n) for n in site_names]
    codes = site_of_subject.copy()
    while len(names) > clients:
        sizes = np.bincount(codes, minlength=len(names))
        small, other = (int(i) for i in np.argsort(sizes, kind="stable")[:2])
        keep, gone = min(small, other), max(small, other)
        names[keep] = f"{names[small]} + {names[other]}"
        codes[codes == gone] = keep
        codes[codes > gone] -= 1
        del names[gone]
    return np.array(names), codes


def _parts_per_site(site_names: np.ndarray, sizes: np.ndarray, config: PartitionConfig) -> np.ndarray:
    """How many clients each site becomes: the site with the largest parts is split once more, until
    there are as many clients as asked."""
    listing = ", ".join(f"{name} ({size} subjects)" for name, size in zip(site_names, sizes))
    parts = np.ones(len(site_names), dtype=np.int64)
    while parts.sum() < config.clients:
        site = int(np.argmax(sizes / parts))
        if sizes[site] // (parts[site] + 1) < config.min_subjects:
            raise ConfigError(
                f"cannot make {config.clients} clients from the sites {listing}: splitting "
                f"{site_names[site]} into {parts[site] + 1} parts leaves a part with fewer than "
                f"min_subjects={config.min_subjects} subjects"
            )
        parts[site] += 1
    return parts


# --- report ----------------------------------------------------------------------------------------------


def partition_table(
    partition: Partition,
    y: np.ndarray,
    classes: Sequence[str],
    split: np.ndarray | None = None,
    subjects: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per client and a final ``all`` row (client <NA>): subjects (when given), examples, the
    count ``n_<class>`` and share ``frac_<class>`` of each class, and examples per split
    (``examples_train``...) when ``split`` is given."""
    client, y = partition.client, np.asarray(y)
    if y.shape != client.shape or y.min() < 0 or y.max() >= len(classes):
        raise ValueError(f"need one class index below {len(classes)} per example, got {y.shape}")
    n_clients = len(partition.names)
    columns: dict[str, object] = {
        "client": pd.array([*range(n_clients), pd.NA], dtype="Int64"),
        "name": [*partition.names, ALL],
    }
    if subjects is not None:
        pairs = np.unique(np.stack([client, np.unique(subjects, return_inverse=True)[1].reshape(-1)]), axis=1)
        columns["subjects"] = _with_total(np.bincount(pairs[0], minlength=n_clients))
    examples = _with_total(np.bincount(client, minlength=n_clients))
    columns["examples"] = examples
    counts = np.zeros((n_clients, len(classes)), dtype=np.int64)
    np.add.at(counts, (client, y), 1)
    for k, name in enumerate(classes):
        columns[f"n_{name}"] = _with_total(counts[:, k])
    for k, name in enumerate(classes):
        columns[f"frac_{name}"] = _with_total(counts[:, k]) / examples
    if split is not None:
        split = np.asarray(split).astype(str)
        for name in _split_names(split):
            columns[f"examples_{name}"] = _with_total(np.bincount(client[split == name], minlength=n_clients))
    return pd.DataFrame(columns)


def _with_total(per_client: np.ndarray) -> np.ndarray:
    return np.append(per_client, per_client.sum())


def _split_names(split: np.ndarray) -> list[str]:
    """train, val, test first (the order a reader expects), any other split names after them."""
    present = set(split.tolist())
    return [s for s in _SPLIT_ORDER if s in present] + sorted(present - set(_SPLIT_ORDER))


def _client_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["client"].notna()]


def label_skew(table: pd.DataFrame, classes: Sequence[str]) -> float:
    """Mean over clients of the total-variation distance between a client's class distribution and the
    pooled one: 0 for identical clients, near 1 when each client holds classes no other client has."""
    counts = _client_rows(table)[[f"n_{c}" for c in classes]].to_numpy(dtype=float)
    pooled = counts.sum(axis=0) / counts.sum()
    shares = counts / counts.sum(axis=1, keepdims=True)
    return float(0.5 * np.abs(shares - pooled).sum(axis=1).mean())


def plot_partition(table: pd.DataFrame, classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Horizontal stacked bars per client: examples by class (left) and each client's class shares
    (right), where dashed lines mark the pooled shares that an iid client would match."""
    rows = _client_rows(table)
    counts = rows[[f"n_{c}" for c in classes]].to_numpy(dtype=float)
    shares = counts / counts.sum(axis=1, keepdims=True)
    figure = Figure(figsize=(11, 1.6 + 0.32 * len(rows)), dpi=DPI, layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    colours = _colours(len(classes))
    for ax, values in ((left, counts), (right, shares)):
        _stacked_bars(ax, values, classes, colours)
    left.set_yticks(np.arange(len(rows)), labels=rows["name"].tolist())
    left.invert_yaxis()
    left.set_xlabel("examples")
    right.set_xlabel("share of the client's examples")
    right.set_xlim(0, 1)
    pooled = {"color": "black", "linestyle": "--", "linewidth": 0.9}
    for edge in np.cumsum(counts.sum(axis=0) / counts.sum())[:-1]:
        right.axvline(edge, **pooled)
    handles = [*left.get_legend_handles_labels()[0], Line2D([], [], label="all clients pooled", **pooled)]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), title="class")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=DPI)
    return Path(path)


def _stacked_bars(ax, values: np.ndarray, classes: Sequence[str], colours: list) -> None:
    start = np.zeros(len(values))
    for k, name in enumerate(classes):
        ax.barh(np.arange(len(values)), values[:, k], left=start, color=colours[k], label=str(name))
        start += values[:, k]
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _colours(n: int) -> list:
    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(colormaps["tab20"].colors[:n])
    return [tuple(c) for c in colormaps["turbo"](np.linspace(0.05, 0.95, n))]
