import gzip
import shutil

import pytest

from prognos.core import data
from prognos.core.data import (
    SENSOR_COLUMNS,
    SETTING_COLUMNS,
    SUBSETS,
    UnknownDatasetError,
    load_cmapss,
    true_rul,
)
from prognos.core.errors import DataFileError
from prognos.core.settings import load_settings

pytestmark = pytest.mark.unit

# From data/cmapss/PROVENANCE.md: (train rows, train units, test rows, test units = RUL values)
PROVENANCE = {
    "FD001": (20631, 100, 13096, 100),
    "FD002": (53759, 260, 33991, 259),
    "FD003": (24720, 100, 16596, 100),
    "FD004": (61249, 249, 41214, 248),
}


@pytest.mark.parametrize("subset", SUBSETS)
def test_row_counts_match_provenance(subset):
    train_rows, train_units, test_rows, test_units = PROVENANCE[subset]
    train = load_cmapss(subset, "train")
    test = load_cmapss(subset, "test")
    assert (len(train), train["machine_id"].nunique()) == (train_rows, train_units)
    assert (len(test), test["machine_id"].nunique()) == (test_rows, test_units)
    assert len(true_rul(subset)) == test_units


def test_columns_are_typed():
    frame = load_cmapss("FD001", "test")
    expected = ["machine_id", "cycle", *SETTING_COLUMNS, *SENSOR_COLUMNS, "rul"]
    assert list(frame.columns) == expected
    assert str(frame["machine_id"].dtype) == "int64"
    assert str(frame["cycle"].dtype) == "int64"
    assert all(str(frame[c].dtype) == "float64" for c in (*SETTING_COLUMNS, *SENSOR_COLUMNS))


def test_train_rul_reaches_zero_at_failure():
    frame = load_cmapss("FD001", "train")
    last = frame.groupby("machine_id").tail(1)
    assert (last["rul"] == 0).all()
    assert frame.groupby("machine_id")["rul"].max().min() > 0


def test_test_rul_at_last_cycle_is_the_published_value():
    frame = load_cmapss("FD001", "test")
    last = frame.groupby("machine_id").tail(1)
    assert last["rul"].tolist() == true_rul("FD001")
    first_machine = frame[frame["machine_id"] == 1]
    # RUL decreases by one per cycle.
    assert (first_machine["rul"].diff().dropna() == -1).all()


@pytest.mark.parametrize(("subset", "split"), [("FD005", "test"), ("FD001", "validation")])
def test_unknown_subset_or_split(subset, split):
    with pytest.raises(UnknownDatasetError, match="unknown"):
        load_cmapss(subset, split)


def _copied_data_dir(tmp_path):
    target = tmp_path / "cmapss"
    shutil.copytree(load_settings().data_dir, target)
    return target


def test_damaged_file_is_reported(tmp_path):
    data_dir = _copied_data_dir(tmp_path)
    damaged = data_dir / "test_FD001.txt.gz"
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0xFF
    damaged.write_bytes(bytes(content))
    with pytest.raises(DataFileError, match="damaged"):
        load_cmapss("FD001", "test", load_settings(data_dir=data_dir))


def test_damaged_file_detected_even_after_a_verified_read(tmp_path):
    data_dir = _copied_data_dir(tmp_path)
    settings = load_settings(data_dir=data_dir)
    load_cmapss("FD001", "test", settings)
    with gzip.open(data_dir / "test_FD001.txt.gz", "wt") as handle:
        handle.write("1 1 0 0 100\n")
    with pytest.raises(DataFileError, match="damaged"):
        load_cmapss("FD001", "test", settings)


def test_missing_file_is_reported(tmp_path):
    data_dir = _copied_data_dir(tmp_path)
    (data_dir / "RUL_FD002.txt.gz").unlink()
    with pytest.raises(DataFileError, match="missing"):
        load_cmapss("FD002", "test", load_settings(data_dir=data_dir))


def test_verification_is_cached(tmp_path, monkeypatch):
    load_cmapss("FD001", "test")
    calls = []
    monkeypatch.setattr(data, "_expected_sums", lambda d: calls.append(d) or {})
    load_cmapss("FD001", "test")
    assert calls == []
