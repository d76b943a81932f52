from pathlib import Path

import pytest
import torch

from medfm.engine.checkpoint import latest_checkpoint, read_checkpoint
from medfm.engine.hooks import Hook
from medfm.engine.trainer import TrainConfig, Trainer
from medfm.errors import ConfigError, MedfmError
from medfm.runs import Run, read_metrics

from .toy import ToyData, ToyModel


def make_trainer(tmp_path: Path, hooks=(), run=None, **overrides) -> Trainer:
    settings = {"steps": 20, "batch_size": 8, "lr": 0.05, "warmup_steps": 2, "workers": 0, "log_every": 1}
    config = TrainConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    return Trainer(ToyModel(), ToyData(), config, tmp_path, hooks=hooks, run=run)


def losses(path: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(path)]


def test_loss_falls_and_metrics_are_logged(tmp_path):
    run = Run.create(tmp_path, TrainConfig())
    last = make_trainer(tmp_path, run=run, steps=60, lr=0.5).fit()
    curve = losses(tmp_path)
    assert len(curve) == 60
    assert last["loss"] < 0.1 * curve[0]
    record = read_metrics(tmp_path)[-1]
    assert {"lr", "weight_decay", "images_per_s", "epoch"} <= record.keys()


def test_resume_gives_the_uninterrupted_curve(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    make_trainer(straight, run=Run.create(straight, TrainConfig()), checkpoint_every=7).fit()
    first = make_trainer(split, run=Run.create(split, TrainConfig()), checkpoint_every=7, steps=20)
    first.config.steps = 20
    # Stop at step 14: train the first two checkpoint periods only.
    batches = first.batches()
    for _ in range(14):
        first.train_step(batches)
    first.save_checkpoint()
    batches.close()
    resumed = make_trainer(split, run=Run.create(split, TrainConfig(), resume_step=14), checkpoint_every=7)
    assert resumed.resume() == 14
    resumed.fit()
    straight_losses = losses(straight)
    assert losses(split) == pytest.approx(straight_losses[14:], rel=1e-6)
    final = read_checkpoint(latest_checkpoint(split / "checkpoints"))["model"]
    reference = read_checkpoint(latest_checkpoint(straight / "checkpoints"))["model"]
    for key in reference:
        torch.testing.assert_close(final[key], reference[key])


def test_checkpoints_hold_no_pickle_and_are_pruned(tmp_path):
    make_trainer(tmp_path, checkpoint_every=5, keep_checkpoints=2, ema_decay=0.9).fit()
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-0000015", "step-0000020"]
    suffixes = {p.suffix for p in (tmp_path / "checkpoints" / "step-0000020").iterdir()}
    assert suffixes == {".safetensors", ".json"}
    saved = read_checkpoint(tmp_path / "checkpoints" / "step-0000020")
    assert saved["ema"] is not None and saved["state"]["step"] == 20


def test_gradient_accumulation_matches_a_large_batch(tmp_path):
    def weights(**overrides):
        trainer = make_trainer(tmp_path / str(overrides), steps=1, checkpoint_every=0, **overrides)
        trainer.model.dropout.p = 0.0
        trainer.fit()
        return trainer.model.linear.weight.detach().clone()

    torch.testing.assert_close(weights(batch_size=8, accum_steps=2), weights(batch_size=16, accum_steps=1))


class Penalty(Hook):
    """Adds a constant to the loss and counts steps; its count survives a resume."""

    name = "penalty"

    def __init__(self):
        self.steps = 0

    def on_outputs(self, trainer, batch, outputs):
        return {**outputs, "loss": outputs["loss"] + 100.0}

    def after_step(self, trainer):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps, "marker": torch.ones(2)}

    def load_state_dict(self, state):
        self.steps = state["steps"]
        assert torch.equal(state["marker"], torch.ones(2))


def test_hooks_change_the_loss_and_keep_state(tmp_path):
    hook = Penalty()
    last = make_trainer(tmp_path, hooks=[hook], steps=4, checkpoint_every=2).fit()
    assert last["loss"] > 100 and hook.steps == 4
    again = Penalty()
    make_trainer(tmp_path, hooks=[again], steps=4).resume()
    assert again.steps == 4


class WithPredictions(ToyModel):
    """Returns its predictions beside the loss, as continual-learning models return logits for hooks."""

    def forward(self, batch):
        pred = self.linear(batch["x"])
        return {"loss": ((pred - batch["y"]) ** 2).mean(), "pred": pred, "count": len(pred)}


class ReadsPredictions(Hook):
    name = "reads"

    def __init__(self):
        self.shapes = []

    def on_outputs(self, trainer, batch, outputs):
        self.shapes.append(tuple(outputs["pred"].shape))
        return outputs


def test_non_scalar_outputs_reach_hooks_but_not_the_metrics(tmp_path):
    run = Run.create(tmp_path, TrainConfig())
    hook = ReadsPredictions()
    config = TrainConfig(steps=3, batch_size=8, workers=0, log_every=1, warmup_steps=0)
    Trainer(WithPredictions(), ToyData(), config, tmp_path, hooks=[hook], run=run).fit()
    assert hook.shapes == [(8, 1)] * 3
    records = read_metrics(tmp_path)
    assert len(records) == 3 and "pred" not in records[0] and records[0]["count"] == 8


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(MedfmError, match=r"loss became (nan|inf)"):
        make_trainer(tmp_path, lr=1e30, warmup_steps=0, steps=30).fit()


def test_resume_refuses_another_batch_size(tmp_path):
    make_trainer(tmp_path, steps=2).fit()
    with pytest.raises(MedfmError, match="batch_size=8"):
        make_trainer(tmp_path, steps=4, batch_size=4).resume()


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        make_trainer(tmp_path, precision="fp8")


def test_bf16_autocast_runs_on_the_cpu_and_keeps_fp32_weights(tmp_path):
    trainer = make_trainer(tmp_path, precision="bf16", steps=3, lr=0.5)
    assert trainer.dtype == torch.bfloat16
    last = trainer.fit()
    assert torch.isfinite(torch.tensor(last["loss"]))
    assert trainer.model.linear.weight.dtype == torch.float32
