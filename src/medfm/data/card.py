"""A built corpus's data card: counts, size and intensity histograms, sample grids, licenses."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from medfm.data.shards import LINKS, catalog_path, read_picture

GRID_SIDE = 4  # sample grids are GRID_SIDE x GRID_SIDE pictures per modality


def write_card(corpus: str | Path, out: str | Path | None = None, seed: int = 0) -> Path:
    """Write ``DATA_CARD.md`` and its figures into ``out`` (default ``<corpus>/card``); return its path."""
    corpus = Path(corpus)
    catalog_file = catalog_path(corpus)
    out = Path(out) if out else corpus / "card"
    out.mkdir(parents=True, exist_ok=True)
    catalog = pd.read_parquet(catalog_file)
    summary = _read_json(corpus / "summary.json", {})
    sources = _read_json(corpus / "sources.json", [])

    samples = _sample_pictures(corpus, catalog, seed)
    figures = {
        "Original image sizes": _size_histogram(catalog, out / "image_sizes.png"),
        "Intensities": _intensity_histograms(catalog, samples, out / "intensities.png"),
    }
    grids = {
        modality: _grid(pictures, out / f"samples-{modality}.png") for modality, pictures in samples.items()
    }

    lines = [f"# Data card: {corpus.name}", ""]
    lines += _summary_lines(summary, catalog)
    for column, title in (("modality", "Modality"), ("anatomy", "Anatomy"), ("source", "Source")):
        lines += [f"## Images by {title.lower()} and split", "", _counts_table(catalog, column, title), ""]
    lines += ["## Subjects by split", "", _subjects_table(catalog), ""]
    lines += _link_lines(summary, corpus / LINKS)
    lines += ["## Figures", ""] + [f"![{title}]({path.name})" for title, path in figures.items()] + [""]
    lines += ["## Sample images per modality", ""]
    lines += [f"### {modality}\n\n![{modality} samples]({path.name})\n" for modality, path in grids.items()]
    lines += ["## Licenses and citations", "", _license_table(sources, catalog), ""]
    path = out / "DATA_CARD.md"
    path.write_text("\n".join(lines))
    return path


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _summary_lines(summary: dict, catalog: pd.DataFrame) -> list[str]:
    skipped = summary.get("skipped_by_reason", {})
    skipped_text = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items())) or "none"
    return [
        f"- images: **{len(catalog):,}** from **{catalog['source'].nunique()}** sources, "
        f"**{catalog['modality'].nunique()}** modalities, {catalog['subject_key'].nunique():,} subjects",
        f"- image size: {summary.get('image_size', '?')} px square, uint8",
        f"- duplicates removed: {summary.get('duplicates_removed', 0):,} "
        f"(exact {summary.get('exact_duplicates', 0):,}, near {summary.get('near_duplicates', 0):,})",
        f"- skipped files: {summary.get('skipped_files', 0):,} ({skipped_text})",
        f"- subjects in more than one split: {summary.get('subjects_in_several_splits', 'not checked')}",
        "",
    ]


def _link_lines(summary: dict, links_file: Path) -> list[str]:
    """How derived pictures were linked to their originals' subjects, the calibration, and every link."""
    links = summary.get("links", {})
    groups = summary.get("subject_groups", {})
    lines = ["## Subjects joined by content", ""]
    lines += [
        "A derived dataset's pictures are linked to the subjects of their originals by thumbnail correlation "
        f"(r >= {links.get('threshold', '?')}), and exact copies join the subjects of the pictures they "
        "copy; every group of joined subjects sits in one split, the most held-out any member asks for. "
        f"{groups.get('joined_groups', 0):,} groups join {groups.get('keys_joined', 0):,} subject keys "
        f"(largest: {groups.get('largest', 1)} keys).",
        "",
    ]
    pairs = links.get("pairs", {})
    if pairs:
        rows = [{"derived -> original": pair, **values} for pair, values in pairs.items()]
        lines += [
            "Calibration: `false_links_between_known_patients` counts originals whose 70 % crop (a stand-in "
            "for a derived picture of a known patient) reaches the threshold against another patient's "
            "picture.",
            "",
            _markdown(pd.DataFrame(rows)),
            "",
        ]
    table = pd.read_parquet(links_file) if links_file.is_file() else pd.DataFrame()
    if len(table):
        shown = table[["derived_source", "derived_sample", "original_key", "r", "ambiguous"]].assign(
            r=table["r"].astype(float).round(4)
        )
        lines += [
            f"<details><summary>All {len(table):,} links (also in <code>{links_file.name}</code>)</summary>",
            "",
            _markdown(shown),
            "",
            "</details>",
            "",
        ]
    return lines


def _counts_table(catalog: pd.DataFrame, column: str, title: str) -> str:
    table = pd.crosstab(catalog[column], catalog["split"], margins=True, margins_name="total")
    return _markdown(table.rename_axis(title).reset_index())


def _subjects_table(catalog: pd.DataFrame) -> str:
    counts = catalog.groupby("split")["subject_key"].nunique().rename("subjects")
    return _markdown(counts.rename_axis("split").reset_index())


def _license_table(sources: list[dict], catalog: pd.DataFrame) -> str:
    if not sources:
        return "(no source list recorded)"
    modalities = catalog.groupby("source")["modality"].unique()
    rows = [
        {
            "source": s["source"],
            "modalities": ", ".join(sorted(modalities.get(s["source"], []))) or "-",
            "license": s["license"],
            "citation": s.get("citation") or "-",
        }
        for s in sources
    ]
    return _markdown(pd.DataFrame(rows))


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(str(v).replace("|", "/") for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def _sample_pictures(corpus: Path, catalog: pd.DataFrame, seed: int) -> dict[str, list[np.ndarray]]:
    """Up to GRID_SIDE**2 random pictures per modality, each read by its catalog offset."""
    rng = np.random.default_rng(seed)
    chosen = catalog.iloc[rng.permutation(len(catalog))].groupby("modality", sort=True).head(GRID_SIDE**2)
    pictures: dict[str, list[np.ndarray]] = {modality: [] for modality in sorted(chosen["modality"].unique())}
    for row in chosen.itertuples(index=False):
        pictures[row.modality].append(read_picture(corpus, row.shard, row.png_offset, row.png_size))
    return pictures


def _grid(pictures: list[np.ndarray], path: Path) -> Path:
    fig, axes = plt.subplots(GRID_SIDE, GRID_SIDE, figsize=(GRID_SIDE * 1.6, GRID_SIDE * 1.6))
    for ax, picture in zip(axes.flat, pictures + [None] * (GRID_SIDE**2 - len(pictures))):
        ax.axis("off")
        if picture is not None:
            ax.imshow(
                picture[0] if picture.shape[0] == 1 else picture.transpose(1, 2, 0),
                cmap="gray",
                vmin=0,
                vmax=255,
            )
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _size_histogram(catalog: pd.DataFrame, path: Path) -> Path:
    shapes = catalog["original_shape"].map(json.loads)
    heights, widths = shapes.map(lambda s: s[-2]), shapes.map(lambda s: s[-1])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, values, name in ((axes[0], heights, "height"), (axes[1], widths, "width")):
        for modality in sorted(catalog["modality"].unique()):
            ax.hist(values[catalog["modality"] == modality], bins=40, alpha=0.6, label=modality, log=True)
        ax.set_xlabel(f"original {name} (px)")
        ax.set_ylabel("pictures")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _intensity_histograms(catalog: pd.DataFrame, samples: dict[str, list[np.ndarray]], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for modality in sorted(catalog["modality"].unique()):
        axes[0].hist(
            catalog.loc[catalog["modality"] == modality, "mean"],
            bins=40,
            range=(0, 1),
            alpha=0.6,
            label=modality,
            density=True,
        )
        pixels = np.concatenate([p.ravel() for p in samples.get(modality, [])] or [np.zeros(1)])
        axes[1].hist(pixels, bins=64, range=(0, 255), histtype="step", label=modality, density=True, log=True)
    axes[0].set_xlabel("mean intensity per picture")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("pixel value (sampled pictures)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
