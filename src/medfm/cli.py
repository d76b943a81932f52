"""The ``medfm`` command line: one sub-command group per stage of a medical foundation model's life."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.table import Column, Table

from medfm.errors import MedfmError
from medfm.log import console, setup_logging

app = typer.Typer(
    help="medfm: curate, pretrain, evaluate and adapt medical foundation models.", no_args_is_help=True
)
data_app = typer.Typer(help="Medical data: sources, corpus building, data cards.", no_args_is_help=True)
app.add_typer(data_app, name="data")
pcs_app = typer.Typer(
    help="Veridical (PCS) analysis: run a stage under a grid of judgment calls, report, reproduce a row.",
    no_args_is_help=True,
)
app.add_typer(pcs_app, name="pcs")

QUICKSTART_BUNDLE = "runs/quickstart/pretrain/bundle"

Overrides = Annotated[
    list[str] | None, typer.Argument(help="config overrides such as image_size=64 workers=1")
]
Rerun = Annotated[bool, typer.Option(help="run every cell again, even those already done")]


def friendly_errors(command):
    """Show medfm's own errors (bad input, bad config) as one red line and exit 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        setup_logging()
        try:
            return command(*args, **kwargs)
        except MedfmError as err:
            console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None

    return wrapper


@data_app.command("sources")
@friendly_errors
def data_sources(pattern: Annotated[str, typer.Argument(help="wildcard, e.g. 'icu*'")] = "*") -> None:
    """List the registered source adapters."""
    from medfm.data.sources import SOURCES

    table = Table("adapter", "kind", "modality", "anatomy", "license")
    for name in SOURCES.list(pattern):
        info = SOURCES.get(name).info
        table.add_row(name, info.kind, info.modality, info.anatomy, info.license)
    console.print(table)


@data_app.command("build")
@friendly_errors
def data_build(
    config: Annotated[Path, typer.Option("--config", "-c", help="corpus YAML (see configs/data/)")],
    overrides: Overrides = None,
) -> None:
    """Build a de-duplicated, subject-split, sharded 2D pretraining corpus from a list of sources."""
    from medfm.config import load_config
    from medfm.data.corpus import CorpusConfig, build_corpus

    summary = build_corpus(load_config(CorpusConfig, config, overrides or []))
    print_summary(summary)


@data_app.command("card")
@friendly_errors
def data_card(
    corpus: Annotated[Path, typer.Option("--corpus", help="a folder made by `medfm data build`")],
    out: Annotated[Path | None, typer.Option(help="where to write the card (default <corpus>/card)")] = None,
) -> None:
    """Write a corpus's data card (Markdown + PNG figures)."""
    from medfm.data.card import write_card

    path = write_card(corpus, out)
    console.print(f"data card written to {path}")


@data_app.command("query")
@friendly_errors
def data_query(
    sql: Annotated[str, typer.Argument(help="SQL over the table `catalog`")],
    corpus: Annotated[Path, typer.Option("--corpus", help="a folder made by `medfm data build`")],
) -> None:
    """Query a corpus catalog with DuckDB, e.g. "SELECT modality, count(*) FROM catalog GROUP BY 1"."""
    from medfm.data.catalog import query_catalog

    result = query_catalog(corpus, sql)
    table = Table(*map(str, result.columns))
    for row in result.itertuples(index=False):
        table.add_row(*map(str, row))
    console.print(table)


@app.command()
@friendly_errors
def pretrain(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="pretraining YAML (configs/pretrain/)")
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Pretrain an encoder self-supervised (MAE or DINOv2-style) on a built corpus; resumes if stopped.

    Run it under `torchrun --nproc_per_node=N` for DDP (gloo on CPUs, NCCL on GPUs).
    """
    from medfm.pretrain.job import load_pretrain_config, run_pretrain

    settings = load_pretrain_config(config, overrides or [])
    last = run_pretrain(settings)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return
    console.print(
        f"[bold green]pretraining done:[/] loss {last.get('loss', float('nan')):.4f}; "
        f"run, checkpoints and bundle in {settings.output}"
    )


@app.command("export")
@friendly_errors
def export(
    run: Annotated[Path, typer.Option("--run", help="a pretraining run folder")],
    out: Annotated[Path | None, typer.Option(help="bundle folder (default <run>/bundle)")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="a checkpoint folder (default: the latest)")] = None,
    weights: Annotated[str, typer.Option(help="auto | ema | raw")] = "auto",
) -> None:
    """Write a release bundle (model.safetensors, config.yaml, MODEL_CARD.md) from a pretraining run."""
    from medfm.pretrain.export import export_bundle

    path = export_bundle(run, out, checkpoint=checkpoint, weights=weights)
    console.print(f"bundle written to {path}")


@app.command("models")
@friendly_errors
def models(pattern: Annotated[str, typer.Argument(help="wildcard, e.g. 'vit_small*'")] = "*") -> None:
    """List the registered encoders and pretraining methods."""
    from medfm.models.encoders import ENCODERS
    from medfm.pretrain.base import METHODS
    from medfm.pretrain.config import PretrainConfig  # noqa: F401  (its import registers the methods)

    table = Table("encoder", "class", "embed dim", "depth", "heads", "patch", "default size")
    for name in ENCODERS.list(pattern):
        spec = ENCODERS.get(name)
        arch = spec.arch
        table.add_row(
            name,
            spec.cls.__name__,
            *(str(arch.get(k)) for k in ("embed_dim", "depth", "num_heads", "patch_size")),
            str(spec.img_size),
        )
    console.print(table)
    console.print("methods: " + ", ".join(METHODS.list()))


def _eval_config(config: Path | None, overrides: list[str], **chosen):
    """An EvalConfig from defaults <- YAML <- overrides, then the command's own options on top."""
    from medfm.config import load_config
    from medfm.evaluate.suite import EvalConfig

    settings = load_config(EvalConfig, config, overrides)
    for key, value in chosen.items():
        if value:
            setattr(settings, key, value)
    return settings


def _split(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


@app.command("eval")
@friendly_errors
def evaluate(
    bundle: Annotated[str, typer.Option("--bundle", help="a bundle folder, or a registered encoder name")],
    tasks: Annotated[str | None, typer.Option(help="comma-separated task names (see `medfm tasks`)")] = None,
    protocols: Annotated[
        str | None, typer.Option(help="comma-separated: linear_probe, knn, finetune, fewshot")
    ] = None,
    baselines: Annotated[
        str | None, typer.Option(help="comma-separated: random_init, scratch, classical")
    ] = None,
    folder: Annotated[
        Path | None, typer.Option(help="also evaluate a folder of images with a labels.csv")
    ] = None,
    label_column: Annotated[str, typer.Option(help="the --folder's label column")] = "label",
    id_column: Annotated[str | None, typer.Option(help="the --folder's patient id column")] = None,
    modality: Annotated[
        str, typer.Option(help="the --folder's modality (xray, ct, mr, fundus, dermoscopy, ...)")
    ] = "unknown",
    out: Annotated[str | None, typer.Option(help="output folder (default runs/eval)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="evaluation YAML")] = None,
    overrides: Overrides = None,
) -> None:
    """Evaluate an encoder on chosen tasks and protocols; write results (CSV, Markdown) and an HTML report.

    A --folder of fewer than 2,000 images is cross-validated (5 folds grouped by --id-column, pooled
    out-of-fold predictions); `cv_folds=0` keeps its 0.8/0.1/0.1 split, `cv_folds=10` sets the folds.
    """
    from medfm.evaluate.console import summary
    from medfm.evaluate.suite import run_eval

    chosen_tasks = _split(tasks)
    settings = _eval_config(
        config,
        overrides or [],
        encoder=bundle,
        tasks=chosen_tasks,
        protocols=_split(protocols),
        baselines=_split(baselines),
        output=out,
    )
    if folder is not None:
        if not chosen_tasks:
            settings.tasks = []
        settings.tasks.append("image_folder")
        settings.task_options["image_folder"] = {
            "root": str(folder),
            "label_column": label_column,
            "id_column": id_column,
            "modality": modality,
        }
    paths = run_eval(settings)
    for part in summary(paths["results.csv"].parent):
        console.print(part)
    console.print(f"\n[bold green]report:[/] {paths['report.html']}")


@app.command()
@friendly_errors
def bench(
    bundle: Annotated[
        str | None, typer.Option("--bundle", help="a bundle folder (default: the quickstart's bundle)")
    ] = None,
    out: Annotated[str | None, typer.Option(help="output folder (default runs/bench)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="evaluation YAML")] = None,
    overrides: Overrides = None,
) -> None:
    """The default suite: every registered task, every protocol, every baseline, sized for a CPU."""
    from medfm.errors import ConfigError
    from medfm.evaluate.suite import run_eval

    if bundle is None:
        bundle = QUICKSTART_BUNDLE
        if not Path(bundle).is_dir():
            raise ConfigError(f"no --bundle given and {bundle} does not exist (`medfm quickstart` writes it)")
    settings = _eval_config(config, overrides or [], encoder=bundle, output=out or "runs/bench")
    paths = run_eval(settings)
    console.print(
        f"[bold green]results:[/] {paths['results.md']}  [bold green]report:[/] {paths['report.html']}"
    )


@pcs_app.command("run")
@friendly_errors
def pcs_run(
    grid: Annotated[Path, typer.Option("--grid", "-g", help="grid YAML (see configs/pcs/)")],
    rerun: Rerun = False,
    overrides: Overrides = None,
) -> None:
    """Run every cell of a grid (resuming a stopped one), then write the tables and the PCS report."""
    from medfm.pcs.grid import load_grid
    from medfm.pcs.runner import run_grid

    paths = run_grid(load_grid(grid, overrides or []), rerun=rerun)
    console.print(f"[bold green]PCS report:[/] {paths['report.html']}  ({paths['pcs.md']})")


@app.command("scale")
@friendly_errors
def scale(
    grid: Annotated[Path, typer.Option("--grid", "-g", help="scaling grid YAML (see configs/scale/)")],
    rerun: Rerun = False,
    overrides: Overrides = None,
) -> None:
    """Pretrain and probe every cell of a scaling grid (resuming a stopped one), fit the power laws and
    write the scaling report."""
    from medfm.scale.study import load_scale_grid, run_scale

    paths = run_scale(load_scale_grid(grid, overrides or []), rerun=rerun)
    console.print(
        f"[bold green]scaling report:[/] {paths['scaling.html']}  ({paths['scaling.md']}); "
        f"PCS report: {paths['report.html']}"
    )


@app.command("federate")
@friendly_errors
def federate(
    config: Annotated[Path, typer.Option("--config", "-c", help="federation YAML (see configs/federated/)")],
    prepare_only: Annotated[
        bool, typer.Option(help="only write the clients' and server's files (for a deployment; see deploy/)")
    ] = False,
    overrides: Overrides = None,
) -> None:
    """Run a federation on Flower: partition the tasks' data across clients, run each strategy (resuming a
    stopped one), train the local-only and centralised baselines, and write the report."""
    from medfm.config import load_config
    from medfm.federated.config import FederateConfig
    from medfm.federated.job import prepare_run, run_federate

    settings = load_config(FederateConfig, config, overrides or [])
    if prepare_only:
        run_dir = prepare_run(settings)
        console.print(f"[bold green]prepared:[/] {run_dir / 'federation'} (config {run_dir / 'config.yaml'})")
        return
    run_dir = run_federate(settings)
    report, document = run_dir / "report.html", run_dir / "federation.md"
    console.print(f"[bold green]federation report:[/] {report}  ({document})")


@app.command("continual")
@friendly_errors
def continual(
    config: Annotated[Path, typer.Option("--config", "-c", help="stream YAML (see configs/continual/)")],
    overrides: Overrides = None,
) -> None:
    """Learn a stream of experiences from a pretrained trunk with each strategy (naive, joint, specialised,
    replay, EWC, LwF, DER++) and write the report: result matrices, forgetting, transfer, cost."""
    from medfm.config import load_config
    from medfm.continual.config import ContinualConfig
    from medfm.continual.job import run_continual

    run_dir = run_continual(load_config(ContinualConfig, config, overrides or []))
    console.print(f"[bold green]continual-learning report:[/] {run_dir / 'continual.md'}")


@pcs_app.command("report")
@friendly_errors
def pcs_report(
    run: Annotated[Path, typer.Argument(help="a folder written by `medfm pcs run` (or its stored tables)")],
    overrides: Overrides = None,
) -> None:
    """Write a finished grid's summaries and PCS report again from its stored results; no cell runs."""
    from medfm.pcs.runner import rebuild_report

    paths = rebuild_report(run, overrides or [])
    console.print(f"[bold green]PCS report:[/] {paths['report.html']}  ({paths['pcs.md']})")


@pcs_app.command("reproduce")
@friendly_errors
def pcs_reproduce(
    run: Annotated[Path, typer.Argument(help="a folder written by `medfm pcs run`")],
    cell: Annotated[str | None, typer.Option(help="a cell id (c00, c01, ...)")] = None,
    row: Annotated[int | None, typer.Option(help="a row number of results.csv (0 is the first)")] = None,
) -> None:
    """Run one cell of a finished grid again and check that its rows match exactly (exit 1 if not)."""
    from medfm.pcs.reproduce import reproduce

    result = reproduce(run, cell=cell, row=row)
    for change in result.environment:
        console.print(f"[yellow]changed since the grid ran:[/] {change}")
    checked = len(result.compared)
    if result.matches:
        console.print(
            f"[bold green]reproduced:[/] cell {result.cell} {result.choices}, {checked} row(s) identical"
        )
        return
    table = Table(*map(str, result.mismatches.columns))
    for values in result.mismatches.itertuples(index=False):
        table.add_row(*map(str, values))
    console.print(table)
    console.print(
        f"[bold red]not reproduced:[/] {len(result.mismatches)} of {checked} row(s) "
        f"of cell {result.cell} differ"
    )
    raise typer.Exit(1)


@app.command("tasks")
@friendly_errors
def tasks_list(pattern: Annotated[str, typer.Argument(help="wildcard, e.g. 'physionet*'")] = "*") -> None:
    """List the registered downstream tasks."""
    from medfm.evaluate.tasks import TASKS
    from medfm.evaluate.tasks.base import PROTOCOLS

    table = Table("kind", "modality", "split", "classes", "protocols", "classical")
    table.columns.insert(0, Column("task", no_wrap=True))  # names are what users type: never cut them
    for name in TASKS.list(pattern):
        info = TASKS.get(name).info
        classes = ", ".join(info.classes) if info.classes else "from the data"
        table.add_row(
            name,
            info.kind,
            info.modality,
            info.split,
            classes,
            "all" if set(info.protocols) == set(PROTOCOLS) else ", ".join(info.protocols),
            info.classical or "",
        )
    console.print(table)


@app.command()
@friendly_errors
def quickstart(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/quickstart"),
    pretrain_steps: Annotated[int, typer.Option(help="MAE steps on the corpus (0: skip pretraining)")] = 300,
) -> None:
    """Build a small corpus from real files (MEDFM_DATA_ROOT, or files shipped with dependencies), then
    pretrain a ViT-Tiny on it with MAE."""
    from medfm.quickstart import run_quickstart

    card = run_quickstart(out, pretrain_steps)
    console.print(Markdown(card.read_text()))
    done = "corpus and card" + (", pretraining run and bundle" if pretrain_steps > 0 else "")
    console.print(f"\n[bold green]quickstart done:[/] {done} in {out}")


def print_summary(summary: dict) -> None:
    table = Table("build summary", "value", show_header=True)
    for key in (
        "output",
        "sources",
        "modalities",
        "images",
        "images_before_dedup",
        "duplicates_removed",
        "exact_duplicates",
        "near_duplicates",
        "skipped_files",
        "subjects",
        "subjects_in_several_splits",
        "seconds",
    ):
        table.add_row(key, str(summary.get(key)))
    for key in ("skipped_by_reason", "images_per_split", "subjects_per_split", "shards_per_split"):
        table.add_row(key, json.dumps(summary.get(key, {})))
    console.print(table)
    per_source = Table("source", "samples", "images", "kept", "skipped", "seconds")
    for name, row in summary.get("per_source", {}).items():
        per_source.add_row(name, *(str(row[k]) for k in ("samples", "images", "kept", "skipped", "seconds")))
    console.print(per_source)


if __name__ == "__main__":
    app()
