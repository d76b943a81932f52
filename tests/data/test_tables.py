import json

import numpy as np
import pytest

from medfm.data.tables import json_value, read_csv_table
from medfm.errors import DataError


def test_json_value_turns_numpy_and_missing_cells_into_json():
    values = [np.int64(3), np.float32("nan"), float("nan"), np.float64(0.5), "x", None]
    converted = [json_value(v) for v in values]
    assert converted == [3, None, None, 0.5, "x", None]
    assert type(converted[0]) is int
    json.dumps(converted, allow_nan=False)


def test_read_csv_table_names_the_problem(tmp_path):
    path = tmp_path / "t.csv"
    with pytest.raises(DataError, match="does not exist"):
        read_csv_table(path, what="index file")
    path.write_text("a,b\n")
    with pytest.raises(DataError, match="header but no rows"):
        read_csv_table(path, what="index file")
    assert read_csv_table(path, allow_empty=True).empty
    path.write_text("A,b\n1,2\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['c'\]"):
        read_csv_table(path, required=["a", "c"], lower_columns=True)
