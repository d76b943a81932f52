"""SQL over a corpus catalog with DuckDB (the Parquet file is queried in place, not loaded)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from medfm.data.shards import catalog_path
from medfm.errors import DataError


def query_catalog(corpus: str | Path, sql: str) -> pd.DataFrame:
    """Run ``sql`` against a view named ``catalog`` over ``<corpus>/catalog.parquet``."""
    path = catalog_path(corpus)
    with duckdb.connect() as connection:
        connection.execute(f"CREATE VIEW catalog AS SELECT * FROM read_parquet('{_quoted(path)}')")
        try:
            return connection.execute(sql).df()
        except duckdb.Error as err:
            raise DataError(f"catalog query failed: {err}") from None


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")
