"""Reading the CSV tables that index or label a dataset, with one clear error for each way they go wrong."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd

from medfm.errors import DataError


def read_csv_table(
    path: Path,
    *,
    what: str = "table",
    required: Iterable[str] = (),
    lower_columns: bool = False,
    allow_empty: bool = False,
    **read_options: Any,
) -> pd.DataFrame:
    """``pandas.read_csv(path, **read_options)``, raising :class:`DataError` (worded ``"<what> <path> ..."``)
    when the file is missing, cannot be parsed, lacks a ``required`` column, or has no rows."""
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        table = pd.read_csv(path, **read_options)
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} {path} is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise DataError(f"cannot parse {what} {path}: {err}") from None
    if lower_columns:
        table.columns = [str(column).lower() for column in table.columns]
    missing = sorted(set(required) - set(table.columns))
    if missing:
        raise DataError(f"{what} {path} lacks column(s) {missing}; it has {list(table.columns)}")
    if table.empty and not allow_empty:
        raise DataError(f"{what} {path} has a header but no rows")
    return table


def check_contained(root: Path, paths: Iterable[tuple[str, str]]) -> None:
    """Refuse index entries that reach outside ``root``: each ``(where, path)`` pair names an entry (e.g.
    ``"labels.csv row 7"``) and the path it gives relative to ``root``.

    Raises :class:`DataError` for the first absolute path, or path that resolves outside ``root`` through
    ``..`` or a symbolic link, so an index file cannot make an adapter read (and log) files elsewhere.
    """
    folder = root.resolve()
    for where, path in paths:
        if PurePath(path).is_absolute():
            raise DataError(f"{where}: path {path!r} is absolute; index paths are relative to {root}")
        if not (folder / path).resolve().is_relative_to(folder):
            raise DataError(f"{where}: path {path!r} leaves the folder {root}")


def check_index_paths(root: Path, table: pd.DataFrame, column: str, index_name: str) -> None:
    """:func:`check_contained` over the non-empty cells of ``column``, each named ``"<index_name> row N"``
    with N counted as a spreadsheet shows it (the header is row 1), so the row is easy to find."""
    cells = table[column]
    check_contained(
        root,
        (
            (f"{index_name} row {position + 2}", str(path))
            for position, path in enumerate(cells)
            if json_value(path) not in (None, "")
        ),
    )


def json_value(value: Any) -> Any:
    """A table cell as a JSON-friendly value: numpy scalars become Python ones, NaN (an empty cell) None."""
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value
