"""Split rules shared by corpora and tasks; groups of subjects joined by content take one split."""

from __future__ import annotations

import pandas as pd

from medfm.data.splits import SplitRule, assign_split, held_out_splits
from medfm.data.subjects import group_splits, subject_groups

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_a_hashed_rule_is_the_keyed_hash_and_official_tests_are_held_out():
    keys = [f"src/s{i}" for i in range(200)]
    plain = SplitRule()
    assert [plain.vote(k, None, FRACTIONS) for k in keys] == [assign_split(k, FRACTIONS) for k in keys]
    assert [plain.vote(k, "test", FRACTIONS) for k in keys] == [assign_split(k, FRACTIONS) for k in keys]
    both = SplitRule(official_test=True)
    assert {both.vote(k, "Test", FRACTIONS) for k in keys} == {"test"}
    assert [both.vote(k, "train", FRACTIONS) for k in keys] == [assign_split(k, FRACTIONS) for k in keys]
    own = SplitRule(fractions=(("train", 0.6), ("val", 0.0), ("test", 0.4)))
    assert [own.vote(k, None, FRACTIONS) for k in keys] == [
        assign_split(k, dict(own.fractions)) for k in keys
    ]


def test_an_official_rule_trains_on_the_official_training_and_validation_splits():
    official = SplitRule(hashed=False, official_test=True)
    assert official.vote("mnist/1", "test", FRACTIONS) == "test"
    assert official.vote("mnist/2", "val", FRACTIONS) == "train"
    assert official.vote("mnist/3", "train", FRACTIONS) == "train"
    assert official.vote("mnist/4", None, FRACTIONS) == assign_split("mnist/4", FRACTIONS)


def test_the_most_held_out_vote_wins():
    votes = pd.DataFrame(
        {"subject_key": ["a", "a", "b", "b", "c"], "vote": ["train", "test", "val", "train", "train"]}
    )
    assert held_out_splits(votes).to_dict() == {"a": "test", "b": "val", "c": "train"}


def test_joined_keys_form_groups_named_by_their_smallest_key():
    groups = subject_groups(["x/2", "x/1", "y/9", "z/5"], [("y/9", "x/2"), ("x/2", "x/1")])
    assert groups == {"x/1": "x/1", "x/2": "x/1", "y/9": "x/1", "z/5": "z/5"}


def test_a_derived_test_picture_holds_out_its_originals_subject():
    # the official test picture of the derived source is linked to a subject the hash puts in training
    train_key = next(f"orig/p{i}" for i in range(100) if assign_split(f"orig/p{i}", FRACTIONS) == "train")
    table = pd.DataFrame(
        {
            "adapter": ["orig", "orig", "derived", "derived"],
            "subject_key": [train_key, train_key, "derived/7", "derived/8"],
            "official_split": [None, None, "test", "train"],
        }
    )
    table["group"] = table["subject_key"].map(
        subject_groups(table["subject_key"], [("derived/7", train_key)])
    )
    rules = {"orig": SplitRule(), "derived": SplitRule(hashed=False, official_test=True)}
    assert group_splits(table, rules, FRACTIONS).tolist() == ["test", "test", "test", "train"]


def test_every_registered_task_splits_as_its_source_does_in_a_corpus():
    from medfm.data.sources import SOURCES
    from medfm.evaluate.tasks import TASKS
    from medfm.evaluate.tasks.base import CORPUS_FRACTIONS

    for name in TASKS.list():
        info = TASKS.get(name).info
        rule = SOURCES.get(info.source).info.split
        if info.split == "official":
            assert rule.official_test, f"{name}: the corpus must hold out {info.source}'s official test split"
        else:
            assert dict(info.fractions) == dict(rule.fractions or CORPUS_FRACTIONS), name


def test_a_dropped_copy_still_votes_for_its_group():
    # an official test picture dropped as an exact copy of a training picture holds that picture out
    train_key = next(f"orig/p{i}" for i in range(100) if assign_split(f"orig/p{i}", FRACTIONS) == "train")
    table = pd.DataFrame(
        {"adapter": ["orig"], "subject_key": [train_key], "official_split": [None], "group": [train_key]}
    )
    copy = pd.DataFrame(
        {
            "adapter": ["derived"],
            "subject_key": ["derived/7"],
            "official_split": ["test"],
            "group": [train_key],
        }
    )
    rules = {"orig": SplitRule(), "derived": SplitRule(hashed=False, official_test=True)}
    assert group_splits(table, rules, FRACTIONS).tolist() == ["train"]
    assert group_splits(table, rules, FRACTIONS, voters=copy).tolist() == ["test"]
