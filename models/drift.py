"""Feature drift: recent gold rows against the champion's training reference.

At registration a model version stores a per-feature reference of its training rows
(`feature_reference`: quantiles for KS, decile bins for PSI). The drift job reads gold,
keeps the rows of the model's subset inside the most recent event-time window, computes
PSI and KS per feature, appends one report row per feature and statistic to the
`drift_report` table, and says whether drift was found (the DAG then emits the drift
Asset that triggers `retrain`). `python -m models.drift --run-id R` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from prognos.core import lake
from prognos.core.data import SUBSETS
from prognos.core.errors import PrognosError
from prognos.core.locks import lake_lock
from prognos.core.registry import FilesystemRegistry, ModelRegistry
from prognos.core.settings import Settings, get_settings
from prognos.core.tables import get_table, is_delta_table, table_path

REFERENCE_KEY = "drift_reference"
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)
PSI_BINS = 10
SHARE_FLOOR = 1e-4  # empty bins would make PSI infinite
STATISTICS = ("psi", "ks")


class DriftError(PrognosError):
    """Drift cannot be measured (no gold, no reference, unusable rows)."""


# ---------------------------------------------------------------- the reference


def feature_reference(frame: pd.DataFrame, columns) -> dict:
    """Per-feature summary of training rows: mean, std, 101 quantiles, decile bins."""
    features = {}
    for column in columns:
        values = _finite(frame[column])
        if len(values) == 0:
            raise DriftError(f"no finite values of {column} to make a drift reference from")
        edges = np.unique(np.quantile(values, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
        features[column] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "quantiles": [float(q) for q in np.quantile(values, QUANTILE_LEVELS)],
            "edges": [float(e) for e in edges],
            "shares": [float(s) for s in bin_shares(values, edges)],
        }
    return {"rows": len(frame), "features": features}


def bin_shares(values: np.ndarray, edges) -> np.ndarray:
    """Share of values in each bin (bins split at `edges`, right-closed like the reference)."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(1, len(values))


def _finite(series: pd.Series) -> np.ndarray:
    values = series.to_numpy(dtype=np.float64)
    return values[np.isfinite(values)]


# ---------------------------------------------------------------- the statistics


def psi(reference: dict, values: np.ndarray) -> float:
    """Population stability index of values over the reference's decile bins."""
    expected = np.maximum(np.asarray(reference["shares"]), SHARE_FLOOR)
    actual = np.maximum(bin_shares(values, reference["edges"]), SHARE_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks(reference: dict, values: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between values and the reference's quantile CDF.

    The reference CDF is the step function of its 101 quantiles (so discrete sensors
    compare exactly); its resolution bounds the error at about 0.01.
    """
    quantiles = np.asarray(reference["quantiles"])
    ordered = np.sort(values)
    points = np.concatenate([ordered, quantiles])
    distance = 0.0
    for side in ("left", "right"):
        current = np.searchsorted(ordered, points, side=side) / len(ordered)
        below = np.searchsorted(quantiles, points, side=side)
        expected = np.maximum(below - 1, 0) / (len(quantiles) - 1)
        distance = max(distance, float(np.abs(current - expected).max()))
    return distance


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2
    ks: float = 0.2
    min_rows: int = 200
    min_features: int = 1  # drifted features needed to call the window drifted

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            settings.drift_psi_threshold,
            settings.drift_ks_threshold,
            settings.drift_min_rows,
            settings.drift_min_features,
        )


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    ks: float
    reference_mean: float
    current_mean: float
    drifted: bool


def compare(reference: dict, window: pd.DataFrame, thresholds: Thresholds) -> list[FeatureDrift]:
    """PSI and KS of each reference feature between the window's rows and the reference."""
    missing = [name for name in reference["features"] if name not in window.columns]
    if missing:
        raise DriftError(f"the recent rows lack reference features: {', '.join(missing)}")
    found = []
    for name, summary in reference["features"].items():
        values = _finite(window[name])
        if len(values) == 0:
            raise DriftError(f"no finite values of {name} in the recent window")
        psi_value, ks_value = psi(summary, values), ks(summary, values)
        drifted = psi_value >= thresholds.psi or ks_value >= thresholds.ks
        found.append(
            FeatureDrift(name, psi_value, ks_value, summary["mean"], float(values.mean()), drifted)
        )
    return found


# ---------------------------------------------------------------- windows over gold


def subset_rows(gold: pd.DataFrame, subset: str) -> pd.DataFrame:
    """Gold rows of one subset's machines (ids start with it; unprefixed ids are FD001)."""
    prefix = gold["machine_id"].astype(str).str.split("-", n=1).str[0]
    machine_subset = prefix.where(prefix.isin(SUBSETS), "FD001")
    return gold[machine_subset == subset]


def recent_window(
    rows: pd.DataFrame, hours: float, end: datetime | None = None
) -> tuple[pd.DataFrame, datetime, datetime]:
    """Rows with end - hours < event_time <= end (end: the newest event time)."""
    if rows.empty:
        raise DriftError("no gold rows of the model's subset to measure drift on")
    times = pd.to_datetime(rows["event_time"], utc=True)
    end_time = pd.Timestamp(end) if end is not None else times.max()
    start_time = end_time - pd.Timedelta(hours=hours)
    inside = (times > start_time) & (times <= end_time)
    return rows[inside], start_time.to_pydatetime(), end_time.to_pydatetime()


# ---------------------------------------------------------------- the job


@dataclass
class DriftResult:
    run_id: str
    model: str
    version: int
    window_start: str
    window_end: str
    rows: int
    drift: bool
    drifted_features: list[str]
    reason: str
    features: list[FeatureDrift] = field(default_factory=list)

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("features")
        return data


def champion_reference(registry: ModelRegistry, model: str) -> tuple[int, dict]:
    """The champion's version, its metadata and its stored training reference."""
    version = registry.champion(model)
    metadata = registry.metadata(model, version)
    if not metadata.get(REFERENCE_KEY):
        raise DriftError(
            f"{model} version {version} stores no training reference ({REFERENCE_KEY}); "
            "retrain it (`prognos train`) to record one"
        )
    return version, metadata


def read_gold(settings: Settings, columns) -> pd.DataFrame:
    spec = get_table("gold_features")
    if not is_delta_table(table_path(spec, settings)):
        raise DriftError(f"no gold_features table at {table_path(spec, settings)}: run the batch")
    table = lake.read_table_arrow(spec, settings)
    wanted = ["machine_id", "cycle", "event_time", *columns]
    absent = [name for name in wanted if name not in table.column_names]
    if absent:
        raise DriftError(f"gold_features lacks columns: {', '.join(absent)}")
    return table.select(wanted).to_pandas()


def measure_drift(
    settings: Settings,
    run_id: str,
    registry: ModelRegistry | None = None,
    model: str | None = None,
    end: datetime | None = None,
) -> DriftResult:
    """Compare the recent gold window with the champion's reference; write the report."""
    registry = registry or FilesystemRegistry(settings.registry)
    model = model or settings.serving_model
    thresholds = Thresholds.from_settings(settings)
    version, metadata = champion_reference(registry, model)
    reference = metadata[REFERENCE_KEY]
    subset = metadata["params"]["subset"]
    gold = subset_rows(read_gold(settings, list(reference["features"])), subset)
    window, start, stop = recent_window(gold, settings.drift_window_hours, end)
    result = DriftResult(
        run_id, model, version, start.isoformat(), stop.isoformat(), len(window), False, [], ""
    )
    if len(window) < thresholds.min_rows:
        result.reason = f"{len(window)} rows in the window, fewer than {thresholds.min_rows}"
        return result
    result.features = compare(reference, window, thresholds)
    result.drifted_features = [f.feature for f in result.features if f.drifted]
    result.drift = len(result.drifted_features) >= thresholds.min_features
    result.reason = (
        f"{len(result.drifted_features)} of {len(result.features)} features drifted "
        f"(PSI >= {thresholds.psi} or KS >= {thresholds.ks}; {thresholds.min_features} needed)"
    )
    write_report(settings, result, thresholds)
    return result


def report_rows(result: DriftResult, thresholds: Thresholds) -> pd.DataFrame:
    computed_at = datetime.now(UTC)
    rows = []
    for feature in result.features:
        for statistic in STATISTICS:
            score = getattr(feature, statistic)
            threshold = getattr(thresholds, statistic)
            rows.append(
                {
                    "run_id": result.run_id,
                    "feature": feature.feature,
                    "statistic": statistic,
                    "reference_value": feature.reference_mean,
                    "current_value": feature.current_mean,
                    "score": score,
                    "drifted": bool(score >= threshold),
                    "computed_at": computed_at,
                    "model": result.model,
                    "model_version": result.version,
                    "threshold": threshold,
                    "window_start": pd.Timestamp(result.window_start),
                    "window_end": pd.Timestamp(result.window_end),
                    "rows": result.rows,
                }
            )
    return pd.DataFrame(rows)


def write_report(settings: Settings, result: DriftResult, thresholds: Thresholds) -> int:
    """Replace this run's rows of drift_report (a rerun of a run id writes the same rows)."""
    import pyarrow as pa

    spec = get_table("drift_report")
    frame = report_rows(result, thresholds)[spec.column_names]
    table = pa.Table.from_pandas(frame, schema=spec.arrow_schema, preserve_index=False)
    return lake.replace_rows_arrow(spec, settings, table, {"run_id": result.run_id})


def read_report(settings: Settings, run_id: str | None = None) -> pd.DataFrame:
    frame = lake.read_table_arrow("drift_report", settings).to_pandas()
    return frame if run_id is None else frame[frame["run_id"] == run_id]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--model", default=None, help="default: the serving model setting")
    args = parser.parse_args(argv)
    run_id = args.run_id or f"manual__{datetime.now(UTC).isoformat()}"
    settings = get_settings()
    try:
        with lake_lock(settings, f"drift {run_id}"):  # reads gold, writes drift_report
            result = measure_drift(settings, run_id, model=args.model)
    except PrognosError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
