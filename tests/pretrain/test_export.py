import shutil

import pandas as pd
import pytest
import torch

from medfm.config import load_config
from medfm.data.shards import CATALOG
from medfm.errors import DataError, MedfmError
from medfm.models.bundle import load_bundle
from medfm.pretrain.config import PretrainConfig
from medfm.pretrain.export import export_bundle
from medfm.pretrain.job import run_pretrain
from medfm.runs import read_metrics


def tiny_run(corpus, out, *extra):
    overrides = [
        f"output={out}",
        f"data.corpus={corpus}",
        "encoder=test_vit",
        "image_size=32",
        "train.steps=3",
        "train.batch_size=8",
        "train.workers=0",
        "train.log_every=1",
        *extra,
    ]
    run_pretrain(load_config(PretrainConfig, None, overrides))
    return out


def test_ema_and_raw_weights_are_both_exportable(tiny_corpus, tmp_path):
    run = tiny_run(
        tiny_corpus,
        tmp_path / "run",
        "train.ema_decay=0.5",
        "method=dino",
        "dino.out_dim=64",
        "dino.head_hidden=32",
        "dino.head_bottleneck=16",
        "dino.freeze_last_layer_epochs=0",  # 3 steps are within the first epoch
    )
    ema = load_bundle(export_bundle(run, tmp_path / "ema", weights="ema"))
    raw = load_bundle(export_bundle(run, tmp_path / "raw", weights="raw"))
    assert ema.config["weights"] == "ema" and raw.config["weights"] == "raw"
    assert ema.config["encoder_prefix"] == "teacher_encoder."
    key = "student_encoder.patch_embed.proj.weight"
    assert not torch.equal(ema.state[key], raw.state[key])
    assert "dino_loss" in ema.config["final_metrics"]


def test_export_errors_are_clear(tiny_corpus, tmp_path):
    with pytest.raises(MedfmError, match="not a pretraining run"):
        export_bundle(tmp_path)
    run = tiny_run(tiny_corpus, tmp_path / "run")
    assert (run / "reconstructions.png").is_file() and (run / "loss.png").is_file()
    first = load_bundle(run / "bundle").state
    tiny_run(tiny_corpus, run)  # a finished run started again trains nothing and re-exports the same
    again = load_bundle(run / "bundle").state
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    with pytest.raises(MedfmError, match="no EMA weights"):
        export_bundle(run, tmp_path / "out", weights="ema")
    with pytest.raises(MedfmError, match="auto, ema or raw"):
        export_bundle(run, tmp_path / "out", weights="best")


def test_resume_false_starts_over_without_stale_checkpoints(tiny_corpus, tmp_path):
    run = tiny_run(tiny_corpus, tmp_path / "run", "train.steps=4", "train.checkpoint_every=2")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    tiny_run(tiny_corpus, run, "resume=false")  # 3 steps from scratch
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000003"]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]


def test_a_corpus_changed_since_training_is_refused_at_export(tiny_corpus, tmp_path):
    """The record of seen subjects is read from the corpus at export, so it must be the trained-on one."""
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    run = tiny_run(corpus, tmp_path / "run")
    export_bundle(run, tmp_path / "same")  # unchanged: exports
    catalog = pd.read_parquet(corpus / CATALOG)
    catalog["split"] = catalog["split"].iloc[::-1].to_numpy()  # a rebuild that moved subjects
    catalog.to_parquet(corpus / CATALOG)
    with pytest.raises(DataError, match="changed since"):
        export_bundle(run, tmp_path / "changed")
