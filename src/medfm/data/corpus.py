"""Build a 2D pretraining corpus from a list of sources: slice, fit, de-duplicate, split by subject, shard.

Stages:

1. *stage*: read each source through its adapter and cut volumes into slices (in this process); fit every
   picture to ``image_size`` x ``image_size`` uint8, hash it (exact and perceptual) and PNG-encode it (in
   ``workers`` processes, so one large source uses every core); write it to a staging Parquet file. Files
   the adapter cannot use are counted by reason.
2. *dedupe*: drop exact copies, then near copies (perceptual hash within ``near_duplicate_bits``);
   the first occurrence in config order is kept, and every drop is listed in ``duplicates.parquet``.
3. *split*: a derived source's pictures are linked to their originals' subjects by content
   (``medfm.data.links``), exact copies join the subjects of the pictures they copy, and each group of
   joined subjects goes to one split: the most held-out any of its pictures asks for under its source's
   split rule, which the evaluation tasks over that source follow too (``medfm.data.subjects``).
4. *shard*: samples are spread over WebDataset tar shards per split (random shard per sample, so every
   shard mixes sources) and described in ``catalog.parquet``.

The output folder also holds ``summary.json``, the run record (resolved config, metrics, provenance) and
``secrets/subject_salt``, the secret that keys DICOM pseudonyms (see :mod:`medfm.data.salt`), which a
rebuild of the folder reuses and nothing else written here contains.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medfm.data.dedup import HASH_BITS, near_duplicate_of, perceptual_hash, pixel_digest
from medfm.data.links import CROPS, DEFAULT_THRESHOLD, THUMB, false_links, link, thumbnails
from medfm.data.salt import SALT_ENV, corpus_salt, write_corpus_salt
from medfm.data.shards import CATALOG, LINKS, ShardSetWriter, encode_png
from medfm.data.sources import SOURCES, open_source, source_options
from medfm.data.splits import check_fractions, subjects_in_several_splits
from medfm.data.subjects import group_splits, subject_groups
from medfm.data.tables import json_value
from medfm.data.transforms import FIT_MODES, fit_to_size, pictures
from medfm.errors import ConfigError, DataError
from medfm.executors import make_executor, one_thread
from medfm.log import get_logger, progress
from medfm.runs import Run

log = get_logger("data.corpus")

STAGING = "_staging"
SALT_OPTION = "subject_salt"  # the adapter option that takes the corpus's salt


@dataclass
class SourceSpec:
    """One entry of a corpus config's ``sources`` list."""

    adapter: str  # registered source adapter (see `medfm data sources`)
    root: str  # folder; relative paths are taken from the config's data_root
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the adapter
    slice_axes: list[str] | None = None  # overrides CorpusConfig.slice_axes for this source
    max_samples: int | None = None  # read at most this many samples (quick looks)


@dataclass
class CorpusConfig:
    output: str = "corpora/medfm"
    data_root: str | None = None  # base of relative source roots; default: $MEDFM_DATA_ROOT
    sources: list[SourceSpec] = field(default_factory=list)
    image_size: int = 224
    fit: str = "pad"  # pad (keep aspect), resize (stretch) or crop (centre)
    slice_axes: list[str] = field(default_factory=lambda: ["axial"])
    slice_step: int = 1
    min_slice_foreground: float = 0.1  # drop slices with less non-zero area than this fraction
    near_duplicate_bits: int = 8  # Hamming radius on the 256-bit pHash; -1 keeps near duplicates
    link_threshold: float = DEFAULT_THRESHOLD  # thumbnail r that links a derived picture to its original
    # fractions of sources that declare none (a source's rule may set its own, see medfm.data.splits)
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    split_seed: int = 0
    shard_size: int = 1000  # samples per shard (about)
    shuffle_seed: int = 0
    workers: int = 2  # processes that fit, hash and encode pictures; 1 does it all in this process


def validate(config: CorpusConfig) -> None:
    if not config.sources:
        raise ConfigError("the corpus config lists no sources")
    if config.fit not in FIT_MODES:
        raise ConfigError(f"fit must be one of {FIT_MODES}, got {config.fit!r}")
    if config.image_size < 8:
        raise ConfigError(f"image_size must be at least 8, got {config.image_size}")
    if config.slice_step < 1 or config.shard_size < 1 or config.workers < 1:
        raise ConfigError("slice_step, shard_size and workers must be positive")
    try:
        check_fractions(config.splits)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for spec in config.sources:
        if SALT_OPTION in spec.options:  # it would be saved with the config and shown in the command line
            raise ConfigError(
                f"source {spec.adapter!r}: {SALT_OPTION} does not belong in a corpus config; set {SALT_ENV} "
                "or leave it to the build, which draws one and keeps it in the corpus folder"
            )


def adapter_options(spec: SourceSpec, salt: str) -> dict[str, Any]:
    """The spec's options, plus the corpus's salt for an adapter that keys pseudonyms with one."""
    keyed = SALT_OPTION in source_options(spec.adapter)
    return (spec.options | {SALT_OPTION: salt}) if keyed else spec.options


def resolve_root(spec: SourceSpec, data_root: str | None) -> Path:
    root = Path(spec.root).expanduser()
    if root.is_absolute():
        return root
    base = data_root or os.environ.get("MEDFM_DATA_ROOT")
    if not base:
        raise ConfigError(
            f"source root {spec.root!r} is relative: set data_root in the config or MEDFM_DATA_ROOT"
        )
    return Path(base).expanduser() / root


@dataclass
class StageResult:
    index: int
    source: str
    adapter: str
    info: dict[str, Any]
    samples: int
    images: int
    skipped: list[dict[str, str]]
    seconds: float
    staging: str


def stage_source(
    index: int,
    spec: SourceSpec,
    root: Path,
    config: CorpusConfig,
    staging: Path,
    encode: Encoder,
    salt: str,
    thumbs: bool = False,
) -> StageResult:
    """Stage one source: its pictures' metadata, hashes and PNG bytes into a Parquet file.

    The adapter is read here; the per-picture work (fit, hash, encode) goes through ``encode``, which
    spreads it over worker processes and returns results in order.
    """
    started = time.perf_counter()
    adapter = open_source(spec.adapter, root, **adapter_options(spec, salt))
    if adapter.info.kind not in ("image", "volume", "vqa"):
        raise ConfigError(
            f"source {adapter.source!r} ({spec.adapter}) holds {adapter.info.kind} data, not images"
        )
    axes = spec.slice_axes or config.slice_axes
    path = staging / f"{index:03d}-{adapter.source}.parquet"
    counter = {"samples": 0}

    def items() -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        for sample in itertools.islice(adapter, spec.max_samples):
            counter["samples"] += 1
            meta, original = sample["meta"], sample["image"].shape
            for slice_info, picture in pictures(sample, axes, config.slice_step, config.min_slice_foreground):
                yield _meta_row(index, meta, slice_info, original), picture

    images = 0
    writer: pq.ParquetWriter | None = None
    try:
        for rows in _batched(encode(items(), thumbs), 256):
            table = pa.Table.from_pylist([row | encoded for row, encoded in rows])
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            images += len(rows)
    finally:
        if writer:
            writer.close()
    return StageResult(
        index=index,
        source=adapter.source,
        adapter=spec.adapter,
        info=asdict(adapter.info) | {"license": adapter.license},
        samples=counter["samples"],
        images=images,
        skipped=[asdict(s) for s in adapter.skips.records],
        seconds=time.perf_counter() - started,
        staging=str(path),
    )


def _meta_row(source_index, meta, slice_info, original) -> dict[str, Any]:
    return {
        "source_index": source_index,
        "source": meta["source"],
        "sample_id": meta["sample_id"],
        "subject_id": meta["subject_id"],
        "modality": meta["modality"],
        "anatomy": meta["anatomy"],
        "license": meta["license"],
        "labels": json.dumps(meta.get("labels", {}), sort_keys=True),
        "official_split": meta.get("official_split"),
        "slice_axis": slice_info.get("slice_axis"),
        "slice_index": slice_info.get("slice_index"),
        "original_shape": json.dumps(list(original)),
    }


def encode_picture(picture: np.ndarray, size: int, fit: str, thumbs: bool = False) -> dict[str, Any]:
    """The per-picture work of a build (in a worker process): fit, hash, PNG-encode; with ``thumbs``,
    the thumbnails that link derived pictures to originals (from the picture as read, before fitting)."""
    fitted = fit_to_size(picture, size, fit)
    encoded = {
        "channels": int(fitted.shape[0]),
        "mean": float(fitted.mean() / 255.0),
        "std": float(fitted.std() / 255.0),
        "sha256": pixel_digest(fitted),
        "phash": f"{perceptual_hash(fitted):0{HASH_BITS // 4}x}",
        "png": encode_png(fitted),
    }
    return encoded | ({"thumbs": thumbnails(picture).tobytes()} if thumbs else {})


Encoder = Callable[[Iterator[tuple[dict[str, Any], np.ndarray]], bool], Iterator[tuple[dict[str, Any], dict]]]


def _encode_chunk(
    pictures_chunk: list[np.ndarray], size: int, fit: str, thumbs: bool
) -> list[dict[str, Any]]:
    return [encode_picture(picture, size, fit, thumbs) for picture in pictures_chunk]


def encoding_pool(workers: int) -> Executor | None:
    """``workers`` spawned processes of one torch thread each, or None (encode in this process) for 1.

    Spawned: a forked child of a process whose torch thread pool has run hangs in its first torch op."""
    return make_executor(workers, one_thread) if workers > 1 else None


def make_encoder(pool: Executor | None, workers: int, size: int, fit: str, chunk: int = 32) -> Encoder:
    """An in-order map of :func:`encode_picture` over ``(row, picture)`` pairs, in ``pool`` when given.

    At most a few chunks per worker are in flight, so memory stays bounded however large the source.
    """

    def encode(items, thumbs: bool = False):
        if pool is None:
            for row, picture in items:
                yield row, encode_picture(picture, size, fit, thumbs)
            return
        in_flight: deque = deque()
        limit = 4 * workers
        for rows_and_pictures in _batched(items, chunk):
            rows = [row for row, _ in rows_and_pictures]
            future = pool.submit(_encode_chunk, [p for _, p in rows_and_pictures], size, fit, thumbs)
            in_flight.append((rows, future))
            while len(in_flight) >= limit:
                yield from _drain(in_flight.popleft())
        while in_flight:
            yield from _drain(in_flight.popleft())

    return encode


def _drain(entry) -> Iterator[tuple[dict[str, Any], dict]]:
    rows, future = entry
    yield from zip(rows, future.result())


def _batched(items, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def build_corpus(config: CorpusConfig) -> dict[str, Any]:
    """Build the corpus described by ``config``; return (and save as summary.json) what it did."""
    validate(config)
    roots = [resolve_root(spec, config.data_root) for spec in config.sources]
    for spec, root in zip(config.sources, roots):
        if not root.exists():
            raise DataError(f"source {spec.adapter!r}: folder does not exist: {root}")
    out = Path(config.output)
    if out.exists():
        _check_replaceable(out)
    salt = corpus_salt(out)  # before the rebuild clears the folder: its pseudonyms stay the same
    if out.exists():
        shutil.rmtree(out)  # a rebuild replaces the corpus whole: stale shards must not survive
    staging = out / STAGING
    staging.mkdir(parents=True)
    write_corpus_salt(out, salt)
    run = Run.create(
        out,
        config,
        seeds={"split_seed": config.split_seed, "shuffle_seed": config.shuffle_seed},
        data={f"{i}:{s.adapter}": r for i, (s, r) in enumerate(zip(config.sources, roots))},
    )
    started = time.perf_counter()

    staged = _stage_all(config, roots, staging, salt)
    for result in staged:
        run.log(
            stage="staged",
            source=result.source,
            samples=result.samples,
            images=result.images,
            skipped=len(result.skipped),
            seconds=round(result.seconds, 2),
        )
    if not any(r.images for r in staged):
        raise DataError("no images were produced by any source; see the skipped-file warnings above")
    table = pd.concat([_staged_metadata(r.staging) for r in staged if r.images], ignore_index=True)

    table["subject_key"] = table["source"] + "/" + table["subject_id"]
    table, duplicates = _dedupe(table, config.near_duplicate_bits)
    table["adapter"] = table["source_index"].map({r.index: r.adapter for r in staged})
    links, calibration = _link_derived(table, staged, config.link_threshold)
    copies = duplicates[duplicates["reason"] == "exact"]
    joins = [
        *zip(links["derived_key"], links["original_key"]),
        *zip(copies["subject_key"], copies["copy_of"]),
    ]
    groups = subject_groups(table["subject_key"], joins)  # the copies' keys too: they are in the joins
    table["group"] = table["subject_key"].map(groups)
    adapter_of = {r.index: r.adapter for r in staged}
    voters = copies.assign(
        adapter=copies["source_index"].map(adapter_of), group=copies["subject_key"].map(groups)
    )
    rules = {r.adapter: SOURCES.get(r.adapter).info.split for r in staged}
    table["split"] = group_splits(table, rules, config.splits, config.split_seed, voters)
    duplicates = duplicates.drop(columns=["source_index", "official_split"])
    for column in ("subject_key", "group"):
        leaked = subjects_in_several_splits(table, subject=column)
        if leaked:  # cannot happen by construction; checked because a leak would be silent otherwise
            raise AssertionError(f"subjects in several splits: {leaked[:5]}")

    table = _write_shards(table, staged, out, config)
    table.drop(columns=["source_index", "row", "adapter"]).to_parquet(out / CATALOG, index=False)
    duplicates.to_parquet(out / "duplicates.parquet", index=False)
    links.to_parquet(out / LINKS, index=False)
    shutil.rmtree(staging)

    summary = _summary(config, staged, table, duplicates, time.perf_counter() - started)
    summary["links"] = _link_summary(links, calibration, config.link_threshold)
    summary["subject_groups"] = _group_summary(table)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "sources.json").write_text(json.dumps([_source_entry(r) for r in staged], indent=2) + "\n")
    run.log(stage="done", **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    run.finish(**{k: summary[k] for k in ("images", "sources", "modalities", "duplicates_removed")})
    return summary


def _check_replaceable(out: Path) -> None:
    """Refuse to delete a folder that is neither empty nor an earlier corpus (a typo must not cost data)."""
    earlier_corpus = (out / "config.yaml").is_file() and (
        (out / CATALOG).is_file() or (out / STAGING).is_dir()
    )
    if out.is_file() or (any(out.iterdir()) and not earlier_corpus):
        raise ConfigError(
            f"output {out} exists and is not a corpus built by medfm; choose another output folder"
        )


def _staged_metadata(path: str) -> pd.DataFrame:
    """Every staged column but the PNG bytes and thumbnails (read from disk when needed)."""
    columns = [name for name in pq.read_schema(path).names if name not in ("png", "thumbs")]
    return pd.read_parquet(path, columns=columns)


def _staged_thumbnails(path: str, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), crops, 784]`` uint8 thumbnails of the staged file's ``rows``."""
    column = pq.read_table(path, columns=["thumbs"]).column("thumbs").to_pylist()
    out = np.zeros((len(rows), len(CROPS), THUMB * THUMB), np.uint8)
    for i, r in enumerate(rows):
        out[i] = np.frombuffer(column[r], np.uint8).reshape(len(CROPS), -1)
    return out


def _staged_pngs(path: str) -> Iterator[bytes]:
    for batch in pq.ParquetFile(path).iter_batches(columns=["png"], batch_size=512):
        yield from batch.column("png").to_pylist()


def _stage_all(config: CorpusConfig, roots: list[Path], staging: Path, salt: str) -> list[StageResult]:
    pool = encoding_pool(config.workers)
    try:
        encode = make_encoder(pool, config.workers, config.image_size, config.fit)
        results = []
        linking = linked_adapters([spec.adapter for spec in config.sources])
        for index, (spec, root) in enumerate(zip(config.sources, roots)):
            encode_counted = _counted(encode, spec.adapter)
            thumbs = spec.adapter in linking
            result = stage_source(index, spec, root, config, staging, encode_counted, salt, thumbs)
            log.info(
                "staged %s: %d samples -> %d images in %.1f s (%d skipped)",
                result.source,
                result.samples,
                result.images,
                result.seconds,
                len(result.skipped),
            )
            results.append(result)
        return results
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def derived_pairs(adapters: list[str]) -> list[tuple[str, str]]:
    """(derived, original) adapter pairs of a corpus: sources that resample another source it holds."""
    present = set(adapters)
    pairs = [(name, SOURCES.get(name).info.derived_from) for name in dict.fromkeys(adapters)]
    return [(derived, original) for derived, original in pairs if original in present]


def linked_adapters(adapters: list[str]) -> set[str]:
    return {name for pair in derived_pairs(adapters) for name in pair}


def _counted(encode: Encoder, name: str) -> Encoder:
    """``encode`` with a progress bar (pictures and pictures/s) for one source."""
    return lambda items, thumbs=False: progress(encode(items, thumbs), f"staging {name}", unit="images")


def _dedupe(table: pd.DataFrame, near_bits: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop exact then near duplicates, keeping the first occurrence; return (kept, dropped with reasons)."""
    table = table.sort_values(["source_index"], kind="stable").reset_index(drop=True)
    table["row"] = table.groupby("source_index").cumcount()
    first_exact = table.groupby("sha256").cumcount() == 0
    originals = table[first_exact].set_index("sha256")
    exact = table[~first_exact].assign(
        reason="exact",
        duplicate_of=lambda d: d["sha256"].map(originals["sample_id"]),
        copy_of=lambda d: d["sha256"].map(originals["subject_key"]),
    )
    kept = table[first_exact].reset_index(drop=True)
    leader = np.array(near_duplicate_of([int(h, 16) for h in kept["phash"]], near_bits))
    is_first = leader == np.arange(len(kept))
    near = kept[~is_first].assign(
        reason="near",
        duplicate_of=kept["sample_id"].to_numpy()[leader[~is_first]],
        copy_of=kept["subject_key"].to_numpy()[leader[~is_first]],
    )
    columns = ["source", "sample_id", "subject_id", "subject_key", "slice_axis", "slice_index", "reason"]
    columns += ["duplicate_of", "copy_of", "source_index", "official_split"]  # the last two: for split votes
    dropped = pd.concat([exact[columns], near[columns]], ignore_index=True)
    return kept[is_first].reset_index(drop=True), dropped


def _write_shards(
    table: pd.DataFrame, staged: list[StageResult], out: Path, config: CorpusConfig
) -> pd.DataFrame:
    """Copy kept pictures from staging into shards; return the table with ``key`` and ``shard`` columns."""
    rng = np.random.default_rng(config.shuffle_seed)
    table = table.copy()
    table["key"] = [f"{i:09d}" for i in rng.permutation(len(table))]
    table["shard_index"] = -1
    writers: dict[str, ShardSetWriter] = {}
    for split, rows in table.groupby("split"):
        n_shards = max(1, math.ceil(len(rows) / config.shard_size))
        table.loc[rows.index, "shard_index"] = rng.permutation(len(rows)) % n_shards
        writers[split] = ShardSetWriter(out, split, n_shards)
    record_columns = [c for c in table.columns if c not in ("source_index", "row", "shard_index")]
    shard_of: dict[tuple[int, int], tuple[str, int, int]] = {}  # (source, row) -> shard, offset, size
    try:
        for result in progress(staged, "writing shards", unit="sources"):
            if not result.images:
                continue  # no staging file
            kept = table[table["source_index"] == result.index]
            entries = dict(zip(kept["row"], kept.to_dict("records")))
            for row, png in enumerate(_staged_pngs(result.staging)):
                entry = entries.get(row)
                if entry is None:
                    continue  # dropped as a duplicate
                record = {c: json_value(entry[c]) for c in record_columns}
                writer = writers[entry["split"]]
                shard_of[(result.index, row)] = (
                    *writer.write(entry["shard_index"], entry["key"], png, record),
                    len(png),
                )
    finally:
        for writer in writers.values():
            writer.close()
    located = [shard_of[(s, r)] for s, r in zip(table["source_index"], table["row"])]
    table["shard"], table["png_offset"], table["png_size"] = (list(column) for column in zip(*located))
    return table.drop(columns=["shard_index"]).sort_values("key").reset_index(drop=True)


def _source_entry(result: StageResult) -> dict[str, Any]:
    return {"source": result.source, "adapter": result.adapter, **result.info}


def _link_derived(
    table: pd.DataFrame, staged: list[StageResult], threshold: float
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Each derived source's pictures linked to the originals' subjects (one row per link), and per pair
    of sources the calibration: links the threshold makes between known different patients."""
    files = {r.adapter: r.staging for r in staged}
    found, calibration = [], {}
    for derived, original in derived_pairs([r.adapter for r in staged]):
        d_rows, o_rows = (table[table["adapter"] == name] for name in (derived, original))
        d_thumbs = _staged_thumbnails(files[derived], d_rows["row"].to_numpy())
        o_thumbs = _staged_thumbnails(files[original], o_rows["row"].to_numpy())
        subjects = o_rows["subject_key"].to_numpy()
        log.info("linking %d %s pictures to %d %s pictures", len(d_rows), derived, len(o_rows), original)
        links = link(d_thumbs, o_thumbs, subjects, threshold)
        hit = links.linked
        targets = o_rows.iloc[links.original[hit]]
        found.append(
            pd.DataFrame(
                {
                    "derived_source": derived,
                    "derived_sample": d_rows["sample_id"].to_numpy()[hit],
                    "derived_key": d_rows["subject_key"].to_numpy()[hit],
                    "original_source": original,
                    "original_sample": targets["sample_id"].to_numpy(),
                    "original_key": targets["subject_key"].to_numpy(),
                    "r": links.r[hit],
                    "ambiguous": links.ambiguous[hit],
                    "labels_agree": [
                        _same_labels(a, b)
                        for a, b in zip(d_rows["labels"].to_numpy()[hit], targets["labels"])
                    ],
                }
            )
        )
        calibration[f"{derived} -> {original}"] = {
            "derived": len(d_rows),
            **false_links(o_thumbs, subjects, threshold),
        }
    columns = ["derived_source", "derived_sample", "derived_key", "original_source", "original_sample"]
    columns += ["original_key", "r", "ambiguous", "labels_agree"]
    return (pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=columns)), calibration


def _same_labels(derived: str, original: str) -> bool | None:
    """Whether two pictures' labels share a value (lower case, any label key); None when either has none."""
    a, b = ({str(v).lower() for v in json.loads(labels).values()} for labels in (derived, original))
    return bool(a & b) if a and b else None


def _link_summary(links: pd.DataFrame, calibration: dict, threshold: float) -> dict[str, Any]:
    summary = {"threshold": threshold, "pairs": {}}
    for pair, checked in calibration.items():
        derived = pair.split(" -> ")[0]
        rows = links[links["derived_source"] == derived]
        agree = rows["labels_agree"].dropna()
        summary["pairs"][pair] = {
            "linked": len(rows),
            "of": checked["derived"],
            "ambiguous": int(rows["ambiguous"].sum()),
            "labels_agree": f"{int(agree.sum())}/{len(agree)}",
            "false_links_between_known_patients": checked["false_links"],
            "originals_checked": checked["pictures_checked"],
            "highest_r_between_patients": round(checked["highest_r"], 4),
        }
    return summary


def _group_summary(table: pd.DataFrame) -> dict[str, Any]:
    """How many subject keys content joined, and the largest group (a runaway join would show here)."""
    keys = table.groupby("group")["subject_key"].nunique()
    return {
        "joined_groups": int((keys > 1).sum()),
        "keys_joined": int(keys[keys > 1].sum()),
        "largest": int(keys.max()),
    }


def _summary(config, staged, table, duplicates, seconds) -> dict[str, Any]:
    skipped: dict[str, int] = {}
    for result in staged:
        for skip in result.skipped:
            skipped[skip["reason"]] = skipped.get(skip["reason"], 0) + 1
    by_split = table.groupby("split")
    return {
        "output": str(config.output),
        "sources": int(table["source"].nunique()),
        "modalities": int(table["modality"].nunique()),
        "images": len(table),
        "images_before_dedup": len(table) + len(duplicates),
        "duplicates_removed": len(duplicates),
        "exact_duplicates": int((duplicates["reason"] == "exact").sum()),
        "near_duplicates": int((duplicates["reason"] == "near").sum()),
        "skipped_files": sum(skipped.values()),
        "skipped_by_reason": skipped,
        "subjects": int(table["subject_key"].nunique()),
        "subjects_in_several_splits": len(subjects_in_several_splits(table)),
        "images_per_split": {k: int(v) for k, v in by_split.size().items()},
        "subjects_per_split": {k: int(v) for k, v in by_split["subject_key"].nunique().items()},
        "shards_per_split": {k: int(v) for k, v in by_split["shard"].nunique().items()},
        "per_source": {
            r.source: {
                "samples": r.samples,
                "images": r.images,
                "kept": int((table["source"] == r.source).sum()),
                "skipped": len(r.skipped),
                "seconds": round(r.seconds, 2),
            }
            for r in staged
        },
        "image_size": config.image_size,
        "seconds": round(seconds, 2),
    }
