"""Federated partitions: subjects never split, kinds behave as their names say, reports add up."""

from __future__ import annotations

import numpy as np
import pytest

from medfm.errors import ConfigError
from medfm.federated.partition import (
    PARTITION_KINDS,
    Partition,
    PartitionConfig,
    label_skew,
    partition_examples,
    partition_table,
    plot_partition,
)

CLASSES = ("negative", "positive")
SITES = ("Cardiac ICU", "Medical ICU", "Surgical ICU", "Trauma ICU")
SITE_SUBJECTS = (60, 240, 120, 180)  # Medical ICU is the largest


def synthetic(n_subjects: int = 600, seed: int = 0):
    """Subjects with one to three examples (shuffled), a binary label and a site per subject; some
    subjects have mixed labels and so count as positive."""
    rng = np.random.default_rng(seed)
    per_subject = rng.choice([1, 3], size=n_subjects, p=[0.7, 0.3])
    subjects = np.repeat([f"p{i:04d}" for i in range(n_subjects)], per_subject)
    y = rng.integers(0, 2, len(subjects))
    site_of_subject = np.repeat(SITES, SITE_SUBJECTS)[rng.permutation(n_subjects)]
    sites = np.repeat(site_of_subject, per_subject)
    order = rng.permutation(len(subjects))
    return subjects[order], y[order], sites[order]


DATA = synthetic()


def split_of(config: PartitionConfig) -> Partition:
    subjects, y, sites = DATA
    return partition_examples(subjects, y, config, sites=sites)


def config_of(kind: str, **overrides) -> PartitionConfig:
    return PartitionConfig(kind=kind, clients=5, **overrides)


def subjects_per_client(partition: Partition) -> np.ndarray:
    subjects = DATA[0]
    return np.array([len(np.unique(subjects[partition.client == c])) for c in range(len(partition.names))])


def skew_of(config: PartitionConfig) -> float:
    return label_skew(partition_table(split_of(config), DATA[1], CLASSES), CLASSES)


@pytest.mark.parametrize("kind", PARTITION_KINDS)
def test_every_example_lands_on_one_client_with_all_of_its_subject(kind):
    partition = split_of(config_of(kind))
    subjects = DATA[0]
    assert partition.client.shape == subjects.shape and partition.client.dtype == np.int64
    assert set(partition.client.tolist()) == set(range(len(partition.names)))
    clients_per_subject = {s: set(partition.client[subjects == s].tolist()) for s in np.unique(subjects)}
    assert all(len(c) == 1 for c in clients_per_subject.values())
    assert subjects_per_client(partition).min() >= 2


@pytest.mark.parametrize("kind", PARTITION_KINDS)
def test_a_seed_fixes_the_partition_and_another_seed_changes_it(kind):
    first = split_of(config_of(kind, seed=1))
    again = split_of(config_of(kind, seed=1))
    other = split_of(config_of(kind, seed=2))
    assert np.array_equal(first.client, again.client) and first.names == again.names
    assert not np.array_equal(first.client, other.client)


def test_the_partition_does_not_depend_on_example_order():
    subjects, y, _ = DATA
    order = np.random.default_rng(5).permutation(len(y))
    config = config_of("dirichlet")
    direct = partition_examples(subjects, y, config).client
    shuffled = partition_examples(subjects[order], y[order], config).client
    assert np.array_equal(direct[order], shuffled)


def test_a_subject_with_any_positive_example_counts_as_positive():
    subjects = np.array(["a", "a", "a", "b", "b", "c", "d"])
    y = np.array([0, 1, 0, 0, 0, 1, 0])
    config = PartitionConfig(kind="dirichlet", clients=2, alpha=1e-3, min_subjects=1, seed=3)
    client = partition_examples(subjects, y, config).client
    positive_clients = {client[0], client[5]}
    negative_clients = {client[3], client[6]}
    assert len(positive_clients) == 1 and len(negative_clients) == 1  # alpha near 0: one client per class


def test_small_alpha_skews_labels_far_more_than_large_alpha_or_iid():
    small = skew_of(config_of("dirichlet", alpha=0.1))
    large = skew_of(config_of("dirichlet", alpha=100.0))
    iid = skew_of(config_of("iid"))
    assert small > 0.2
    assert small > 4 * large and small > 4 * iid


def test_quantity_skew_varies_client_sizes_far_more_than_iid():
    skewed = subjects_per_client(split_of(config_of("quantity", beta=0.5, min_subjects=10)))
    even = subjects_per_client(split_of(config_of("iid")))
    assert skewed.min() >= 10 and skewed.sum() == even.sum() == 600
    assert skewed.std() > 10 * even.std() + 20


def test_natural_gives_one_client_per_site_named_by_site():
    partition = split_of(PartitionConfig(kind="natural", clients=0))
    assert partition.names == list(SITES)
    assert subjects_per_client(partition).tolist() == list(SITE_SUBJECTS)
    _, _, sites = DATA
    assert all((sites[partition.client == c] == name).all() for c, name in enumerate(partition.names))


def test_natural_splits_the_largest_site_in_halves_for_an_extra_client():
    partition = split_of(PartitionConfig(kind="natural", clients=5))
    assert partition.names == [
        "Cardiac ICU",
        "Medical ICU (1/2)",
        "Medical ICU (2/2)",
        "Surgical ICU",
        "Trauma ICU",
    ]
    assert subjects_per_client(partition).tolist() == [60, 120, 120, 120, 180]


def test_natural_with_fewer_clients_than_sites_merges_the_two_smallest():
    partition = split_of(PartitionConfig(kind="natural", clients=3))
    assert partition.names == ["Cardiac ICU + Surgical ICU", "Medical ICU", "Trauma ICU"]
    assert subjects_per_client(partition).tolist() == [180, 240, 180]


def test_natural_rejects_a_subject_at_two_sites_and_missing_sites():
    subjects, y = np.array(["a", "a", "b", "c"]), np.array([0, 1, 0, 0])
    sites = np.array(["Cardiac ICU", "Trauma ICU", "Cardiac ICU", "Trauma ICU"])
    natural = PartitionConfig(kind="natural", clients=0)
    with pytest.raises(
        ConfigError, match=r"subject 'a' has examples at several sites \['Cardiac ICU', 'Trauma"
    ):
        partition_examples(subjects, y, natural, sites=sites)
    with pytest.raises(ConfigError, match="needs each example's site"):
        partition_examples(subjects, y, natural)


def test_impossible_min_subjects_is_a_config_error():
    with pytest.raises(ConfigError, match="600 subjects cannot give 5 clients"):
        split_of(config_of("iid", min_subjects=121))
    with pytest.raises(ConfigError, match="no Dirichlet draw in 100"):  # two classes cannot fill 10 clients
        split_of(PartitionConfig(kind="dirichlet", clients=10, alpha=1e-3))
    with pytest.raises(ConfigError, match="leaves a part with fewer than min_subjects"):
        split_of(PartitionConfig(kind="natural", clients=300, min_subjects=5))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"kind": "random"}, "kind"),
        ({"clients": 0}, "clients"),
        ({"clients": 2.5}, "clients"),
        ({"kind": "natural", "clients": -1}, "clients"),
        ({"alpha": 0}, "alpha"),
        ({"beta": -1.0}, "beta"),
        ({"alpha": "high"}, "alpha"),
        ({"min_subjects": 0}, "min_subjects"),
        ({"seed": -3}, "seed"),
        ({"site": 4}, "site"),
    ],
)
def test_bad_config_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=f"partition {key} must"):
        PartitionConfig(**overrides)


def test_partition_table_counts_add_up():
    subjects, y, _ = DATA
    partition = split_of(config_of("dirichlet"))
    split = np.random.default_rng(0).choice(["train", "val", "test"], size=len(y))
    table = partition_table(partition, y, CLASSES, split=split, subjects=subjects)
    clients, total = table.iloc[:-1], table.iloc[-1]
    assert total["name"] == "all" and len(clients) == 5
    assert clients["examples"].sum() == total["examples"] == len(y)
    assert clients["subjects"].sum() == total["subjects"] == 600
    for k, name in enumerate(CLASSES):
        assert clients[f"n_{name}"].sum() == total[f"n_{name}"] == (y == k).sum()
    assert np.allclose(clients["frac_negative"] + clients["frac_positive"], 1)
    assert [c for c in table.columns if c.startswith("examples_")] == [
        "examples_train",
        "examples_val",
        "examples_test",
    ]
    assert (
        clients[["examples_train", "examples_val", "examples_test"]].sum(axis=1) == clients["examples"]
    ).all()


def test_label_skew_is_zero_for_identical_clients():
    partition = Partition(client=np.array([0, 0, 1, 1]), names=["a", "b"])
    table = partition_table(partition, np.array([0, 1, 0, 1]), CLASSES)
    assert label_skew(table, CLASSES) == 0.0


def test_plot_partition_writes_a_png(tmp_path):
    table = partition_table(split_of(config_of("dirichlet", alpha=0.3)), DATA[1], CLASSES)
    path = plot_partition(table, CLASSES, tmp_path / "partition.png", title="Dirichlet α=0.3, 5 clients")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
