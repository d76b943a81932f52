"""Logging and progress bars that share one console, so log lines print above a live bar."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def setup_logging(level: int | str = logging.INFO) -> None:
    """Route the ``medfm`` loggers to the shared console (idempotent)."""
    root = logging.getLogger("medfm")
    root.setLevel(level)
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("medfm") else f"medfm.{name}")


def progress(
    items: Iterable[T],
    description: str,
    total: int | None = None,
    unit: str = "items",
    *,
    start: int = 0,
    scale: float = 1.0,
) -> Iterator[T]:
    """Iterate with a progress bar showing count, rate and time left (plain output when not a terminal).

    ``start`` is how many of ``total`` were done before (a resumed run); the rate shown is items per
    second times ``scale`` (training steps counted, images per second shown).
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total, completed=start, rate="")
        for item in items:
            yield item
            bar.advance(task)
            speed = bar.tasks[0].speed
            if speed:
                bar.update(task, rate=f"{speed * scale:,.1f} {unit}/s")
