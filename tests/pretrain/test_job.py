"""Acceptance tests of `medfm pretrain` / `medfm export` on a small real corpus."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medfm.engine.checkpoint import latest_checkpoint, read_checkpoint
from medfm.errors import ConfigError
from medfm.models.encoders import create_encoder
from medfm.pretrain.build import build_method
from medfm.pretrain.config import PretrainConfig
from medfm.pretrain.data import CorpusImages
from medfm.pretrain.job import load_pretrain_config, run_pretrain
from medfm.runs import read_metrics

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def pretrain_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medfm.cli",
        "pretrain",
        f"output={out}",
        f"data.corpus={corpus}",
        "encoder=test_vit",
        "image_size=32",
        "train.batch_size=8",
        "train.workers=1",
        "train.log_every=1",
        "train.warmup_steps=5",
        "train.lr=1e-3",
        *extra,
    ]


def step_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run)}


@pytest.mark.slow
def test_sigkill_and_resume_repeat_the_uninterrupted_curve(tiny_corpus, tmp_path):
    steps = ["train.steps=80", "train.checkpoint_every=10"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(pretrain_args(tiny_corpus, straight, *steps), env=ENV, check=True, capture_output=True)

    process = subprocess.Popen(
        pretrain_args(tiny_corpus, killed, *steps),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a checkpoint exists and training went on past it
        metrics = killed / "metrics.jsonl"
        logged = step_losses(killed) if metrics.is_file() and metrics.stat().st_size else {}
        if latest_checkpoint(killed / "checkpoints") is not None and max(logged, default=0) >= 13:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "bundle").exists(), "the run finished before it could be killed"
    stopped_at = max(step_losses(killed))

    subprocess.run(pretrain_args(tiny_corpus, killed, *steps), env=ENV, check=True, capture_output=True)
    resumed, reference = step_losses(killed), step_losses(straight)
    assert sorted(resumed) == list(range(1, 81)), f"killed at step {stopped_at}: steps missing or repeated"
    assert [resumed[s] for s in range(1, 81)] == pytest.approx([reference[s] for s in range(1, 81)], rel=1e-5)
    assert resumed[80] < resumed[1]


def test_export_bundle_loads_into_a_plain_encoder(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    subprocess.run(pretrain_args(tiny_corpus, run, "train.steps=4"), env=ENV, check=True, capture_output=True)
    out = tmp_path / "exported"
    result = subprocess.run(
        [sys.executable, "-m", "medfm.cli", "export", "--run", str(run), "--out", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    card = (out / "MODEL_CARD.md").read_text()
    assert "pneumoniamnist" in card and "optimiser steps | 4" in card
    encoder = create_encoder(str(out))
    trained = read_checkpoint(latest_checkpoint(run / "checkpoints"))["model"]
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(value, trained[f"encoder.{name}"])
    with pytest.raises(AssertionError):  # the check above can fail: a fresh encoder differs
        fresh = create_encoder("test_vit", img_size=32).state_dict()
        for name, value in fresh.items():
            torch.testing.assert_close(value, trained[f"encoder.{name}"])


def test_bad_pretrain_settings_are_one_clear_line(tiny_corpus, tmp_path):
    result = subprocess.run(
        pretrain_args(tiny_corpus, tmp_path, "method=simclr"), env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unknown pretraining method 'simclr'" in result.stderr
    assert "Traceback" not in result.stderr


def dino_config(corpus: Path, out: Path, *extra: str) -> PretrainConfig:
    """A small DINO run in this process (no worker processes)."""
    small = ["dino.n_local=1", "dino.out_dim=64", "dino.head_hidden=64", "dino.head_bottleneck=32"]
    overrides = pretrain_args(corpus, out, "method=dino", *small, "train.workers=0", *extra)[4:]
    return load_pretrain_config(None, overrides)


def test_dino_run_ending_within_the_frozen_epochs_is_refused(tiny_corpus, tmp_path):
    config = dino_config(tiny_corpus, tmp_path, "train.steps=4")
    with pytest.raises(ConfigError, match=r"dino\.freeze_last_layer_epochs=1 covers the whole run \(4 steps"):
        run_pretrain(config)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_dino_job_freezes_the_last_layer_for_the_first_epoch(tiny_corpus, tmp_path):
    pictures = len(CorpusImages(tiny_corpus, lambda image, generator: {}, fraction=0.1))
    per_epoch = pictures // 8
    config = dino_config(
        tiny_corpus,
        tmp_path,
        "data.fraction=0.1",
        f"train.steps={per_epoch + 1}",
        f"train.checkpoint_every={per_epoch}",
        "train.keep_checkpoints=3",
    )
    initial = build_method(config).state_dict()
    run_pretrain(config)
    end_of_epoch_0 = read_checkpoint(tmp_path / "checkpoints" / f"step-{per_epoch:07d}")["model"]
    end_of_run = read_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["model"]
    last, hidden = "student_head.last_weight", "student_head.mlp.0.weight"
    assert torch.equal(end_of_epoch_0[last], initial[last])
    assert not torch.equal(end_of_epoch_0[hidden], initial[hidden])
    assert not torch.equal(end_of_run[last], initial[last])
