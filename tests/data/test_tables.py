import json

import numpy as np
import pandas as pd
import pytest

from medfm.data.tables import check_contained, check_index_paths, json_value, read_csv_table
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


def test_check_contained_refuses_paths_outside_the_folder(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("secret")
    (folder / "escape.txt").symlink_to(tmp_path / "outside.txt")
    (folder / "inner.txt").symlink_to(folder / "sub")  # a link that stays inside is fine
    check_contained(folder, [("r2", "sub/../a.jpg"), ("r3", "inner.txt"), ("r4", "not/yet/there.jpg")])
    for path, problem in [
        ("../outside.txt", "leaves the folder"),
        ("sub/../../outside.txt", "leaves the folder"),
        ("escape.txt", "leaves the folder"),
        (str(tmp_path / "outside.txt"), "is absolute"),
    ]:
        with pytest.raises(DataError, match=f"^labels.csv row 7: path '.*' {problem}"):
            check_contained(folder, [("labels.csv row 6", "sub/a.jpg"), ("labels.csv row 7", path)])


def test_check_index_paths_names_the_spreadsheet_row(tmp_path):
    table = pd.DataFrame({"path": ["a.jpg", None, "", "../../etc/passwd"]})
    with pytest.raises(DataError, match=r"^files.csv row 5: path '\.\./\.\./etc/passwd' leaves the folder"):
        check_index_paths(tmp_path, table, "path", "files.csv")
    check_index_paths(tmp_path, table.iloc[:3], "path", "files.csv")  # empty cells are not paths
