"""The scaling stage: one cell pretrains an encoder on a share of a corpus, then probes it on tasks.

A cell is one (model size, data fraction, method, data mix): ``medfm pretrain`` into ``pretrain/``, the
method's loss on held-out corpus pictures, and ``medfm eval`` of the exported bundle into ``eval/``. Its
cost record holds what the fits need: encoder parameters, distinct pretraining pictures, images seen,
and the FLOPs of the whole pretraining run (one training step counted by torch's FLOP counter, times the
steps). Registered in the PCS stages, so grids, resume, per-cell measurement and the PCS report come
from :mod:`medfm.pcs`.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from medfm.errors import ConfigError
from medfm.evaluate.suite import EvalConfig, EvalMemo
from medfm.pcs.stages import STAGES, CellOutput, Stage, eval_inputs, eval_memo, run_eval_cell
from medfm.pretrain.config import PretrainConfig
from medfm.seeding import seeded


@dataclass
class ScaleCellConfig:
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    # passes over the cell's pretraining pictures; sets pretrain.train.steps (0: keep the steps given)
    epochs: float = 3.0
    warmup_fraction: float = 0.1  # of the steps (with epochs > 0): small fractions train few steps
    heldout_pictures: int = 512  # corpus validation pictures on which the trained method's loss is taken
    eval: EvalConfig = field(default_factory=EvalConfig)  # its encoder is the cell's bundle

    def check(self) -> ScaleCellConfig:
        if self.epochs < 0 or self.heldout_pictures < 0 or not 0 <= self.warmup_fraction < 1:
            raise ConfigError("epochs and heldout_pictures must be >= 0 and warmup_fraction in [0, 1)")
        check_pretrain(self.pretrain)
        if self.epochs > 0:
            pictures = pretraining_pictures(self.pretrain)
            images = self.pretrain.train.batch_size * self.pretrain.train.accum_steps
            self.pretrain.train.steps = max(1, math.ceil(self.epochs * pictures / images))
            self.pretrain.train.warmup_steps = round(self.warmup_fraction * self.pretrain.train.steps)
        self.pretrain.train.check()
        self.eval.check()
        return self


def check_pretrain(config: PretrainConfig) -> None:
    """Refuse, before any cell runs, an unknown encoder or method and invalid method or view settings."""
    from medfm.models.encoders import ENCODERS, bundle_path
    from medfm.pretrain.base import METHODS

    try:
        METHODS.get(config.method)
        if bundle_path(config.encoder) is None:
            ENCODERS.get(config.encoder)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    settings = getattr(config, config.method, None)
    if hasattr(settings, "check"):
        settings.check()
    config.views.check()


def pretraining_pictures(config: PretrainConfig) -> int:
    """Distinct pictures the pretraining run reads (the corpus split after its filters and fraction)."""
    data = config.data
    return _count_rows(
        data.corpus, data.split, tuple(data.modalities), tuple(data.sources), data.fraction, config.train.seed
    )


@functools.cache
def _count_rows(corpus, split, modalities, sources, fraction, seed) -> int:
    from medfm.pretrain.data import corpus_rows

    rows = corpus_rows(
        corpus, split=split, modalities=list(modalities), sources=list(sources), fraction=fraction, seed=seed
    )
    return len(rows)


def _random_batch(config: PretrainConfig, method, size: int) -> dict[str, torch.Tensor]:
    """``size`` views of random pictures: what one training step of the method takes."""
    view, generator = method.views(), torch.Generator().manual_seed(0)
    side = config.image_size * 2  # the view crops and resizes, as from a corpus picture
    samples = [
        view(torch.rand(config.in_chans, side, side, generator=generator), generator) for _ in range(size)
    ]
    return default_collate(samples)


def images_per_run(config: PretrainConfig) -> int:
    """Images a pretraining run sees (on one process: the scale stage runs a cell in one)."""
    return config.train.steps * config.train.batch_size * config.train.accum_steps


_flops_per_image: dict[str, float] = {}  # by architecture and method settings: the same for every cell


def training_flops_per_image(config: PretrainConfig) -> float:
    """FLOPs of one training step (forward and backward of the method's loss) per image."""
    from medfm.config import config_to_dict
    from medfm.measure import flops_per_example
    from medfm.pretrain.build import build_method

    plain = config_to_dict(config)
    key = json.dumps([plain[k] for k in ("encoder", "in_chans", "image_size", "method", config.method)])
    if key not in _flops_per_image:
        with torch.random.fork_rng():  # building the method seeds the global generator
            method = build_method(config)
            batch = _random_batch(config, method, 2)

            def step() -> None:
                with torch.enable_grad():  # the counter runs without gradients; a training step needs them
                    method(batch)["loss"].backward()

            _flops_per_image[key] = flops_per_example(step, batch_size=2)
    return _flops_per_image[key]


def heldout_loss(config: PretrainConfig, bundle: Path, pictures: int) -> float:
    """The trained method's mean loss on ``pictures`` validation pictures of the corpus (fixed views), so
    runs on different data fractions are compared on the same unseen pictures."""
    from medfm.errors import DataError
    from medfm.models.bundle import load_bundle
    from medfm.pretrain.build import build_method
    from medfm.pretrain.data import CorpusImages

    if pictures == 0:
        return float("nan")
    method = build_method(config)
    method.load_state_dict(load_bundle(bundle).state)
    try:
        data = config.data  # the run's data mix, on pictures no run trained on
        images = CorpusImages(
            data.corpus, method.views(), split="val", modalities=data.modalities, sources=data.sources
        )
    except DataError:  # a corpus without a validation split
        return float("nan")
    picked = np.random.default_rng(0).permutation(len(images))[:pictures]
    losses, batch_size = [], config.train.batch_size
    with torch.no_grad(), seeded(0):  # MAE draws its masks from the global generator
        for start in range(0, len(picked), batch_size):
            samples = [images[(int(i), int(i))] for i in picked[start : start + batch_size]]
            batch = default_collate(samples)
            losses.append(float(method(batch)["loss"]) * len(samples))
    return sum(losses) / len(picked)


def run_scale_cell(config: ScaleCellConfig, folder: Path) -> CellOutput:
    """Pretrain, take the held-out loss, evaluate the bundle; the cost record holds the fit's inputs."""
    from medfm.measure import count_parameters
    from medfm.models.encoders import create_encoder
    from medfm.pretrain.job import run_pretrain

    pretrain = copy.deepcopy(config.pretrain)
    pretrain.output = str(folder / "pretrain")
    started = time.monotonic()
    run_pretrain(pretrain)
    seconds = time.monotonic() - started
    bundle = folder / "pretrain" / "bundle"
    images_seen = images_per_run(pretrain)
    flops_per_image = training_flops_per_image(pretrain)
    record = {
        "model": pretrain.encoder,
        "method": pretrain.method,
        "stage": "pretrain",
        "parameters": count_parameters(create_encoder(bundle)),
        "pictures": pretraining_pictures(pretrain),
        "steps": pretrain.train.steps,
        "images_seen": images_seen,
        "train_flops_per_image": flops_per_image,
        "train_flops": flops_per_image * images_seen,
        "heldout_loss": heldout_loss(pretrain, bundle, config.heldout_pictures),
        "pretrain_seconds": round(seconds, 2),
    }
    evaluation = copy.deepcopy(config.eval)
    evaluation.encoder = str(bundle)
    # loaded tasks are shared with later cells; this encoder's features are not (no other cell has it)
    memo = EvalMemo(tasks=eval_memo().tasks)
    output = run_eval_cell(evaluation, folder / "eval", memo)
    return CellOutput(output.rows, output.predictions, [record, *output.costs])


def scale_inputs(config: ScaleCellConfig) -> dict[str, Path]:
    return {"corpus": Path(config.pretrain.data.corpus), **eval_inputs(config.eval)}


def scale_cost(config: ScaleCellConfig) -> float:
    """Estimated work: pretraining FLOPs (evaluation is small beside it)."""
    return training_flops_per_image(config.pretrain) * images_per_run(config.pretrain)


def scale_cards(config: ScaleCellConfig) -> dict[str, str]:
    """The corpus's summary and the tasks' cards; the model card names what every cell pretrains."""
    from medfm.pcs.stages import eval_cards

    corpus = Path(config.pretrain.data.corpus)
    summary_path = corpus / "summary.json"
    lines = [f"### Pretraining corpus `{corpus.name}`", ""]
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        for key in ("images", "subjects", "images_per_split", "subjects_per_split"):
            if key in summary:
                lines.append(f"- {key.replace('_', ' ')}: {summary[key]}")
    lines += ["", "Cells pretrain on its training split only; tasks are scored on their test splits.", ""]
    tasks = eval_cards(config.eval)
    model = (
        "Each cell pretrains its own encoder (the grid's `pretrain.encoder` alternatives) with its method "
        "and exports a bundle under `cells/<id>/pretrain/bundle`; its model card lies beside it."
    )
    return {"data": "\n".join(lines) + tasks["data"], "model": model}


def _register_scale() -> None:
    from medfm.evaluate.metrics import METRICS

    STAGES.register(
        "scale",
        Stage(
            name="scale",
            config_type=ScaleCellConfig,
            run=run_scale_cell,
            # one process per cell: no loader workers, no parallel scoring; the probe is BioVFM's protocol
            defaults={
                "pretrain": {"train": {"workers": 0, "keep_checkpoints": 1}},
                "eval": {
                    "report": False,
                    "workers": 0,
                    "n_boot": 200,
                    "protocols": ["linear_probe"],
                    "task_protocols": {},
                    "baselines": [],
                },
            },
            cards=scale_cards,
            inputs=scale_inputs,
            metrics=METRICS,
            cost=scale_cost,
            forget=eval_memo.cache_clear,
        ),
    )


_register_scale()
