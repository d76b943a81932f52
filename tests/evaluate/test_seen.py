"""Test subjects an encoder saw in pretraining: counted by key and by content, refused or reported apart."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from safetensors.numpy import load_file
from typer.testing import CliRunner

from medfm.cli import app
from medfm.data.dedup import near_any
from medfm.data.seen import SeenSubjects, key_hash, seen_by_keys
from medfm.data.shards import read_picture
from medfm.errors import DataError
from medfm.evaluate.seen import SEEN_COLUMN, UNSEEN, content_sources
from medfm.evaluate.suite import EvalConfig, run_eval
from medfm.models.bundle import SEEN_FILE
from medfm.pretrain.job import load_pretrain_config, run_pretrain


def test_a_subject_is_seen_by_its_own_key_or_through_its_content_group():
    catalog = pd.DataFrame(
        {
            "subject_key": ["orig/p1", "orig/p2", "derived/7", "derived/8", "orig/p3"],
            "group": ["derived/7", "orig/p2", "derived/7", "derived/8", "orig/p3"],
        }
    )
    trained = catalog.iloc[[0, 1]]  # p1 (joined to derived/7 by content) and p2
    dropped = pd.DataFrame({"subject_key": ["copies/9"], "copy_of": ["orig/p2"]})  # an exact copy of p2's
    seen = SeenSubjects.from_corpus(catalog, trained, dropped)
    assert seen_by_keys(seen, "derived", ["7", "8"]).tolist() == [True, False]
    assert seen_by_keys(seen, "orig", ["p1", "p2", "p3"]).tolist() == [True, True, False]
    assert seen_by_keys(seen, "copies", ["9"]).tolist() == [True]
    assert set(seen.subjects) == set(key_hash(["orig/p1", "orig/p2", "derived/7"]))


def test_a_key_in_several_pairs_is_seen_when_any_of_its_groups_was_trained():
    """A dropped copy of a trained picture and of an untrained one: the key has two pairs, and the
    trained group must win whichever pair comes last."""
    catalog = pd.DataFrame({"subject_key": ["orig/a", "orig/b"], "group": ["orig/a", "orig/b"]})
    dropped = pd.DataFrame({"subject_key": ["copies/9", "copies/9"], "copy_of": ["orig/a", "orig/b"]})
    seen = SeenSubjects.from_corpus(catalog, catalog.iloc[[0]], dropped)
    assert seen_by_keys(seen, "copies", ["9"]).tolist() == [True]


def test_a_near_copy_is_found_even_when_another_test_picture_is_nearer_first():
    """Hashes within 2 bits: t2 is 2 bits from the trained picture c, t1 is 2 bits from t2 and 4 from c,
    and t1 shares the band of t2 that is searched first."""
    c = 0
    t2 = 0b11  # bits 0 and 1: the first band
    t1 = t2 | (0b11 << 100)  # and two bits of the second band
    assert near_any([c], [t1, t2], max_bits=2).tolist() == [False, True]
    assert near_any([], [t2], max_bits=2).tolist() == [False]


def test_content_is_matched_where_keys_cannot_tell_against_the_relatives_pictures():
    corpus = {"pediatric_pneumonia_xray", "pneumoniamnist", "idrid_fundus"}
    assert content_sources("image_folder:scans", corpus) == corpus  # a user's folder: everything
    # a test picture is looked for among the pictures of the source it was cut from, or cut into
    assert content_sources("pneumoniamnist", corpus) == {"pediatric_pneumonia_xray"}
    assert content_sources("pediatric_pneumonia_xray", corpus) == {"pneumoniamnist"}
    assert content_sources("pneumoniamnist", {"idrid_fundus"}) == set()
    assert content_sources("idrid_fundus", corpus) == set()


@pytest.fixture(scope="module")
def bundle(tiny_corpus, tmp_path_factory):
    """A bundle pretrained for 2 steps on the tiny real corpus."""
    out = tmp_path_factory.mktemp("seen") / "pre"
    overrides = [f"output={out}", f"data.corpus={tiny_corpus}", "encoder=test_vit", "image_size=32"]
    overrides += ["train.batch_size=8", "train.workers=1", "train.steps=2", "train.warmup_steps=1"]
    run_pretrain(load_pretrain_config(None, overrides))
    return out / "bundle"


@pytest.fixture(scope="module")
def scans(tiny_corpus, dataset, tmp_path_factory):
    """A user's folder: 20 of the corpus's training pictures resized to 48 px, then 20 PneumoniaMNIST
    test images the corpus does not hold (labels alternate)."""
    catalog = pd.read_parquet(tiny_corpus / "catalog.parquet")
    trained = catalog[(catalog["split"] == "train") & (catalog["source"] == "pneumoniamnist")].head(20)
    pictures = [read_picture(tiny_corpus, r.shard, r.png_offset, r.png_size)[0] for r in trained.itertuples()]
    pictures += list(np.load(dataset("pneumoniamnist") / "pneumoniamnist.npz")["test_images"][:20])
    folder = tmp_path_factory.mktemp("scans") / "scans"
    (folder / "images").mkdir(parents=True)
    rows = ["path,label"]
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).resize((48, 48)).save(folder / "images" / f"{i:02d}.png")
        rows.append(f"images/{i:02d}.png,{'a' if i % 2 else 'b'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_the_bundle_records_the_subjects_its_pretraining_trained_on(bundle, tiny_corpus):
    record = load_file(str(bundle / SEEN_FILE))
    catalog = pd.read_parquet(tiny_corpus / "catalog.parquet")
    train = catalog[catalog["split"] == "train"]
    expected = key_hash(sorted({*train["subject_key"], *train["group"]}))
    assert np.array_equal(record["subjects"], np.unique(expected))


def folder_eval(bundle, scans, out, **extra) -> EvalConfig:
    return EvalConfig(
        output=str(out),
        encoder=str(bundle),
        tasks=["image_folder"],
        task_options={"image_folder": {"root": str(scans)}},
        protocols=["linear_probe"],
        baselines=[],
        cv_folds=5,  # every picture is tested once
        n_boot=20,
        workers=0,
        **extra,
    )


@pytest.mark.slow
def test_a_folder_of_pretraining_pictures_is_refused_unless_allowed(bundle, scans, tmp_path):
    with pytest.raises(
        DataError, match=r"task image_folder: \d+ of \d+ test subjects were in the pretraining"
    ):
        run_eval(folder_eval(bundle, scans, tmp_path / "refused"))
    run_eval(folder_eval(bundle, scans, tmp_path / "allowed", allow_seen=True))
    rows = pd.read_csv(tmp_path / "allowed" / "results.csv")
    auroc = rows[(rows["metric"] == "auroc") & (rows["subgroup"] == "all")].set_index("eval_set")
    # the 20 corpus pictures are found by content, the 20 others are not
    assert auroc.loc["test", "n"] == 40 and auroc.loc["test", SEEN_COLUMN] == 20
    assert auroc.loc[UNSEEN, "n"] == 20 and auroc.loc[UNSEEN, SEEN_COLUMN] == 0


@pytest.mark.slow
def test_a_folder_unmatched_for_want_of_the_corpus_has_an_unknown_count(bundle, scans, tmp_path):
    """Keys cannot tell a user's folder apart: without the corpus the count is unknown, never 0."""
    moved = tmp_path / "bundle"
    shutil.copytree(bundle, moved)
    config = yaml.safe_load((moved / "config.yaml").read_text())
    config["data"]["corpus_path"] = str(tmp_path / "gone")
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    run_eval(folder_eval(moved, scans, tmp_path / "unknown"))
    rows = pd.read_csv(tmp_path / "unknown" / "results.csv")
    assert rows[SEEN_COLUMN].isna().all()
    report = (tmp_path / "unknown" / "results.md").read_text()
    assert "unknown how many of 40 test subjects seen in pretraining (keys only" in report


@pytest.mark.slow
def test_the_cli_stops_with_one_line_naming_the_task_the_count_and_the_fix(bundle, scans, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--bundle",
            str(bundle),
            "--folder",
            str(scans),
            "--out",
            str(tmp_path / "cli"),
            "n_boot=20",
        ],
    )
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "error: task image_folder: 20 of 40 test subjects were in the pretraining data" in message
    assert "allow_seen=true" in message


@pytest.mark.slow
def test_registered_tasks_held_out_by_the_corpus_pass_by_key(bundle, tmp_path):
    config = EvalConfig(
        output=str(tmp_path / "mnist"),
        encoder=str(bundle),
        tasks=["pneumoniamnist"],
        protocols=["linear_probe"],
        baselines=[],
        limit=400,
        n_boot=20,
        workers=0,
    )
    run_eval(config)
    rows = pd.read_csv(tmp_path / "mnist" / "results.csv")
    assert (rows[SEEN_COLUMN] == 0).all() and UNSEEN not in set(rows["eval_set"])
    assert "Task pneumoniamnist: 0 of" in (tmp_path / "mnist" / "results.md").read_text()
