"""``medfm export``: turn a pretraining run's checkpoint into a release bundle with its model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from medfm.config import config_to_dict, load_config
from medfm.data.seen import SeenSubjects
from medfm.data.shards import CATALOG
from medfm.engine.checkpoint import STATE, latest_checkpoint, load_tensors
from medfm.errors import DataError, MedfmError
from medfm.models.bundle import SEEN_FILE, save_bundle
from medfm.pretrain.base import METHODS
from medfm.pretrain.config import PretrainConfig
from medfm.pretrain.data import corpus_rows
from medfm.runs import fingerprint_path, read_metrics


def export_bundle(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    checkpoint: str | Path | None = None,
    weights: str = "auto",
) -> Path:
    """Write ``model.safetensors``, ``config.yaml`` and ``MODEL_CARD.md`` for a pretraining run.

    ``checkpoint`` defaults to the run's latest; ``weights`` is ``ema`` (the EMA copy), ``raw`` (the trained
    weights) or ``auto`` (EMA when the run kept one).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MedfmError(f"{run_dir} is not a pretraining run folder (no config.yaml)")
    config = load_config(PretrainConfig, run_dir / "config.yaml")
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise MedfmError(f"{run_dir} has no checkpoint yet (nothing under {run_dir / 'checkpoints'})")
    if weights not in ("auto", "ema", "raw"):
        raise MedfmError(f"weights must be auto, ema or raw, got {weights!r}")
    has_ema = (ckpt / "ema.safetensors").is_file()
    if weights == "ema" and not has_ema:
        raise MedfmError(f"{ckpt} has no EMA weights (the run had train.ema_decay=0)")
    use_ema = has_ema and weights != "raw"
    state = load_tensors(ckpt / ("ema.safetensors" if use_ema else "model.safetensors"))
    saved = json.loads((ckpt / STATE).read_text())
    step = saved["step"]
    method = METHODS.get(config.method)
    metrics = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("step", 0) <= step and "loss" in r]
    bundle_config = {
        "encoder": {"name": config.encoder, "in_chans": config.in_chans, "img_size": config.image_size},
        "method": config.method,
        "encoder_prefix": method.encoder_prefix,
        "normalisation": {"mean": config.views.mean, "std": config.views.std},
        "weights": "ema" if use_ema else "raw",
        "steps": step,
        "images_seen": step * config.train.batch_size * config.train.accum_steps * saved["world_size"],
        "final_metrics": metrics[-1] if metrics else {},
        "pretrain_config": config_to_dict(config),
        "data": _corpus_summary(config),
    }
    out = Path(out) if out else run_dir / "bundle"
    check_corpus_unchanged(run_dir, Path(config.data.corpus))
    seen = seen_subjects(config)
    files = {SEEN_FILE: seen.tensors()} if seen else {}
    return save_bundle(out, state, bundle_config, model_card(bundle_config, metrics), files=files)


def check_corpus_unchanged(run_dir: Path, corpus: Path) -> None:
    """Refuse to export when the corpus catalog differs from the one the run trained on: the bundle's
    record of the subjects it saw is read from the catalog, and a rebuilt corpus can split them otherwise.

    The catalog, not the whole folder: a rebuild with the same content writes new logs beside it."""
    provenance = run_dir / "provenance.json"
    if not provenance.is_file() or not (corpus / CATALOG).is_file():
        return
    record = json.loads(provenance.read_text())
    trained_on = {
        segment.get("data", {}).get("catalog", {}).get("blake2b")
        for segment in [record, *record.get("earlier_segments", [])]
    } - {None}  # runs from before the catalog was recorded are not checked
    if trained_on and trained_on != {fingerprint_path(corpus / CATALOG)["blake2b"]}:
        raise DataError(
            f"{corpus} changed since {run_dir} trained on it (its catalog differs from the run's "
            "provenance.json): the bundle cannot tell which subjects it saw; export with the corpus the "
            "run used, or pretrain again on this one"
        )


def seen_subjects(config: PretrainConfig) -> SeenSubjects | None:
    """The subjects (and content groups) of the pictures the run trained on; None without the corpus."""
    root = Path(config.data.corpus)
    if not (root / CATALOG).is_file():
        return None
    catalog = pd.read_parquet(root / CATALOG)
    if "group" not in catalog.columns:  # a corpus built before subjects were grouped by content
        catalog["group"] = catalog["subject_key"]
    data = config.data
    trained = corpus_rows(
        root,
        split=data.split,
        modalities=data.modalities,
        sources=data.sources,
        fraction=data.fraction,
        seed=config.train.seed,
    )
    duplicates = root / "duplicates.parquet"
    dropped = pd.read_parquet(duplicates) if duplicates.is_file() else None
    if dropped is not None and "copy_of" not in dropped.columns:
        dropped = None
    return SeenSubjects.from_corpus(catalog, catalog.loc[trained.index], dropped)


def _corpus_summary(config: PretrainConfig) -> dict[str, Any]:
    root = Path(config.data.corpus)
    summary = json.loads((root / "summary.json").read_text()) if (root / "summary.json").is_file() else {}
    sources = json.loads((root / "sources.json").read_text()) if (root / "sources.json").is_file() else []
    used: dict[str, int] = {}
    if (root / CATALOG).is_file():  # what the pretraining split held, by modality (before `fraction`)
        rows = pd.read_parquet(root / CATALOG, columns=["split", "source", "modality"])
        rows = rows[rows["split"] == config.data.split]
        if config.data.modalities:
            rows = rows[rows["modality"].isin(config.data.modalities)]
        if config.data.sources:
            rows = rows[rows["source"].isin(config.data.sources)]
        used = {str(k): int(v) for k, v in rows.groupby("modality").size().items()}
    catalog = root / CATALOG
    return {
        "corpus": root.name,
        "corpus_path": str(root.resolve()),
        "catalog_blake2b": fingerprint_path(catalog)["blake2b"] if catalog.is_file() else None,
        "images": summary.get("images"),
        "images_per_split": summary.get("images_per_split"),
        "subjects": summary.get("subjects"),
        "image_size": summary.get("image_size"),
        "pretraining_images_by_modality": used,
        "sources": [{k: s.get(k) for k in ("source", "modality", "anatomy", "license")} for s in sources],
    }


def model_card(config: dict[str, Any], metrics: list[dict[str, Any]]) -> str:
    """A Markdown model card: what the encoder is, what it saw, how it was trained, how it ended."""
    pre, data, final = config["pretrain_config"], config["data"], config["final_metrics"]
    train, encoder = pre["train"], config["encoder"]
    lines = [
        f"# {config['method'].upper()} {encoder['name']} ({encoder['in_chans']} channel(s), "
        f"{encoder['img_size']} px)",
        "",
        "A self-supervised medical image encoder pretrained with medfm. Load it with "
        '`medfm.models.encoders.create_encoder("<this folder>")`; inputs are scaled to [0, 1] and then '
        f"normalised with mean {config['normalisation']['mean']} and std {config['normalisation']['std']}.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {config['method']} ({json.dumps(pre[config['method']])}) |",
        f"| optimiser steps | {config['steps']} |",
        f"| images seen | {config['images_seen']:,} |",
        f"| batch (per rank x accumulation) | {train['batch_size']} x {train['accum_steps']} |",
        f"| learning rate | peak {train['lr']}, warm-up {train['warmup_steps']} steps, "
        f"cosine to {train['min_lr']} |",
        f"| weight decay | {train['weight_decay']} -> {train['weight_decay_end']} |",
        f"| precision | {train['precision']} |",
        f"| weights exported | {config['weights']} |",
        "",
        "## Data",
        "",
        f"Corpus `{data['corpus']}`: {data['images']} pictures of {data['subjects']} subjects at "
        f"{data['image_size']} px, split by subject ({json.dumps(data['images_per_split'])}); "
        f"pretraining used split `{pre['data']['split']}`"
        + (f", modalities {pre['data']['modalities']}" if pre["data"]["modalities"] else "")
        + (f", {pre['data']['fraction']:.0%} of it" if pre["data"]["fraction"] < 1 else "")
        + ". The subjects of those pictures are recorded, hashed, in `seen_subjects.safetensors`: medfm's "
        "evaluations count a task's test subjects found there and refuse to score them as unseen.",
        "",
        "| modality | pictures in the pretraining split |",
        "|---|---|",
        *(f"| {m} | {n:,} |" for m, n in data["pretraining_images_by_modality"].items()),
        "",
        "| source | modality | anatomy | license |",
        "|---|---|---|---|",
        *(f"| {s['source']} | {s['modality']} | {s['anatomy']} | {s['license']} |" for s in data["sources"]),
        "",
        "## Final training metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {v:.4g} |" for k, v in final.items() if isinstance(v, float) and k != "time"),
        "",
        f"Logged points: {len(metrics)}. The run folder holds `metrics.jsonl` and `loss.png`.",
        "",
        "## Limits",
        "",
        "Pretrained on a small public corpus; not a medical device. Check each source's license before "
        "redistributing the weights.",
        "",
    ]
    return "\n".join(lines)
