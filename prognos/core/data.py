"""NASA C-MAPSS loader: one subset/split as a typed frame, checksums verified.

Columns: machine_id (unit number, int), cycle (int), setting_1..3, sensor_1..21 (float)
and rul (int): cycles left until failure at that row. Train engines run to failure, so
rul = last_cycle - cycle; test engines stop early and RUL_FD00x.txt gives the RUL at their
last cycle, so rul = true_rul_at_last + last_cycle - cycle.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import pandas as pd

from prognos.core.errors import DataFileError, PrognosError
from prognos.core.settings import Settings, get_settings

SUBSETS = ("FD001", "FD002", "FD003", "FD004")
SPLITS = ("train", "test")
SETTING_COLUMNS = tuple(f"setting_{i}" for i in range(1, 4))
SENSOR_COLUMNS = tuple(f"sensor_{i}" for i in range(1, 22))
RAW_COLUMNS = ("machine_id", "cycle", *SETTING_COLUMNS, *SENSOR_COLUMNS)

# (path, size, mtime_ns) of files whose checksum was verified in this process.
_verified: set[tuple[str, int, int]] = set()


class UnknownDatasetError(PrognosError):
    """A C-MAPSS subset or split name that does not exist."""


def check_subset_split(subset: str, split: str) -> None:
    if subset not in SUBSETS:
        choices = ", ".join(SUBSETS)
        raise UnknownDatasetError(f"unknown subset {subset!r}: expected one of {choices}")
    if split not in SPLITS:
        raise UnknownDatasetError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def load_cmapss(subset: str, split: str, settings: Settings | None = None) -> pd.DataFrame:
    """One subset/split as a frame sorted by machine and cycle, with the true `rul`."""
    check_subset_split(subset, split)
    data_dir = (settings or get_settings()).data_dir
    frame = _read_rows(data_dir, f"{split}_{subset}.txt.gz")
    last_cycle = frame.groupby("machine_id")["cycle"].transform("max")
    if split == "train":
        frame["rul"] = last_cycle - frame["cycle"]
    else:
        final_rul = true_rul(subset, settings)
        machines = sorted(frame["machine_id"].unique())
        if len(final_rul) != len(machines):
            raise DataFileError(
                f"RUL_{subset}.txt.gz holds {len(final_rul)} values for {len(machines)} "
                "test machines: the file is damaged"
            )
        at_last = frame["machine_id"].map(dict(zip(machines, final_rul, strict=True)))
        frame["rul"] = at_last + last_cycle - frame["cycle"]
    frame["rul"] = frame["rul"].astype("int64")
    return frame


def true_rul(subset: str, settings: Settings | None = None) -> list[int]:
    """The true RUL at the last cycle of each test machine, in machine order."""
    check_subset_split(subset, "test")
    path = verified_path((settings or get_settings()).data_dir, f"RUL_{subset}.txt.gz")
    try:
        with gzip.open(path, "rt") as handle:
            return [int(line.split()[0]) for line in handle if line.strip()]
    except (OSError, EOFError, zlib.error, ValueError, IndexError) as error:
        raise DataFileError(f"cannot parse {path}: {error}") from None


def _read_rows(data_dir: Path, name: str) -> pd.DataFrame:
    path = verified_path(data_dir, name)
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, engine="c", compression="gzip")
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise DataFileError(f"cannot parse {path}: {error}") from None
    if frame.shape[1] != len(RAW_COLUMNS):
        raise DataFileError(f"{path} has {frame.shape[1]} columns, expected {len(RAW_COLUMNS)}")
    frame.columns = list(RAW_COLUMNS)
    frame = frame.astype({"machine_id": "int64", "cycle": "int64"})
    floats = [*SETTING_COLUMNS, *SENSOR_COLUMNS]
    frame[floats] = frame[floats].astype("float64")
    return frame.sort_values(["machine_id", "cycle"], ignore_index=True)


def verified_path(data_dir: Path, name: str) -> Path:
    """The path of a vendored file whose sha256 matches SHA256SUMS (checked once)."""
    path = Path(data_dir) / name
    if not path.is_file():
        raise DataFileError(f"data file missing: {path} (vendored under data/cmapss)")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return path
    expected = _expected_sums(Path(data_dir)).get(name)
    if expected is None:
        raise DataFileError(f"{name} is not listed in {Path(data_dir) / 'SHA256SUMS'}")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise DataFileError(
            f"data file damaged: {path} sha256 {actual[:12]}... != {expected[:12]}... in SHA256SUMS"
        )
    _verified.add(key)
    return path


def _expected_sums(data_dir: Path) -> dict[str, str]:
    sums = data_dir / "SHA256SUMS"
    if not sums.is_file():
        raise DataFileError(f"checksum file missing: {sums}")
    expected = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            expected[name.strip()] = digest
    return expected
