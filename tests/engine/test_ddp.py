"""Two CPU ranks under torchrun (gloo): different samples per rank, one shared model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.multiprocess
def test_two_ranks_see_different_samples_and_agree_on_weights(tmp_path):
    # Each rank seeds its own model differently: DDP must still start both from rank 0's weights.
    result = torchrun(str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    first, second = (set(r["indices"]) for r in ranks)
    assert len(ranks[0]["indices"]) == len(first) == 24  # 6 steps x 4, no repeats within an epoch
    assert not first & second
    assert ranks[0]["weight"] == pytest.approx(ranks[1]["weight"], abs=1e-6)
    # Logged metrics are means over ranks, so every rank reports the same loss.
    assert ranks[0]["logged_loss"] == pytest.approx(ranks[1]["logged_loss"], rel=1e-6)
    checkpoint = tmp_path / "checkpoints" / "step-0000006"
    assert {"rng-rank0.safetensors", "rng-rank1.safetensors", "model.safetensors"} <= {
        p.name for p in checkpoint.iterdir()
    }


@pytest.mark.multiprocess
@pytest.mark.slow
def test_pretrain_command_runs_under_torchrun(tiny_corpus, tmp_path):
    medfm = shutil.which("medfm", path=str(Path(sys.executable).parent))
    assert medfm, "the medfm console script is not installed beside this Python"
    result = torchrun(
        "--no-python",
        medfm,
        "pretrain",
        f"output={tmp_path}",
        f"data.corpus={tiny_corpus}",
        "encoder=test_vit",
        "image_size=32",
        "train.steps=4",
        "train.batch_size=8",
        "train.workers=0",
        "train.log_every=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 rank(s), 16 images per step" in result.stderr.replace("\n", " ")
    assert (tmp_path / "bundle" / "model.safetensors").is_file()
