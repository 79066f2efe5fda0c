"""Driver-side scoring of a micro-batch's view records, and the alert-level memory.

The state function hands over each touched machine's recent history; here the features of
every machine come from one vectorised call of the shared feature code and the champion
scores all their windows in one call (one TF call per micro-batch instead of one per
machine). Alerts are raised when a machine's level rises above the level it last had;
those levels live in `AlertMemory`, saved in the query's checkpoint per batch so a batch
replayed after a crash starts from exactly the levels the batch before it left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from prognos.core import alerting
from prognos.core.features import compute_features_many
from prognos.core.scoring import Champion
from prognos.core.settings import Settings
from speed_layer.state import READING_COLUMNS, decode_history

KEY_COLUMNS = ("machine_id", "cycle")


def score_views(views: pd.DataFrame, champion: Champion | None, settings: Settings):
    """The view records with predicted_rul, alert_level, model_version and features_json."""
    scored = views.drop(columns=["history_cycles", "history_readings"])
    if champion is None or scored.empty:
        scored["predicted_rul"] = None
        scored["features_json"] = None
        scored["model_version"] = None
    else:
        ruls, features = _predict(views, champion)
        scored["predicted_rul"] = ruls
        scored["features_json"] = features
        scored["model_version"] = champion.version
    scored["alert_level"] = [alerting.alert_level(r, settings) for r in scored["predicted_rul"]]
    return scored


def history_frame(views: pd.DataFrame) -> pd.DataFrame:
    """One frame of every view record's history: machine_id, cycle, settings, sensors."""
    parts = [
        decode_history(bytes(cycles), bytes(readings))
        for cycles, readings in zip(views["history_cycles"], views["history_readings"], strict=True)
    ]
    columns = {
        "machine_id": np.repeat(views["machine_id"].to_numpy(), [len(c) for c, _ in parts]),
        "cycle": np.concatenate([c for c, _ in parts]),
    }
    readings = np.vstack([r for _, r in parts])
    columns.update(zip(READING_COLUMNS, readings.T, strict=True))
    return pd.DataFrame(columns)


def _predict(views: pd.DataFrame, champion: Champion) -> tuple[list[float], list[str]]:
    """Per view record (in order): the RUL of its latest window and its last feature row
    as JSON. Windows are built as `prognos.core.scoring.model_window` builds them."""
    spec = champion.spec
    features = compute_features_many(
        history_frame(views), spec.condition_model, spec.feature_config
    )  # sorted by machine and cycle
    machines = features["machine_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, machines[1:] != machines[:-1]])
    stops = np.r_[starts[1:], len(machines)]
    inputs = features[list(spec.input_columns)].to_numpy(dtype=np.float32)
    names = [c for c in features.columns if c not in KEY_COLUMNS]
    values = features[names].to_numpy(dtype=np.float64)
    windows, last_rows = {}, {}
    for start, stop in zip(starts, stops, strict=True):
        rows = inputs[max(start, stop - spec.window) : stop]
        if len(rows) < spec.window:
            rows = np.vstack([np.repeat(rows[:1], spec.window - len(rows), axis=0), rows])
        windows[machines[start]] = rows
        last_rows[machines[start]] = values[stop - 1]
    order = list(views["machine_id"])
    ruls = champion.predict_ruls(np.stack([windows[m] for m in order]))
    texts = [json.dumps(dict(zip(names, map(float, last_rows[m]), strict=True))) for m in order]
    return [float(r) for r in ruls], texts


class AlertMemory:
    """Each machine's last known alert level, kept by the driver across micro-batches.

    `alerts(batch_id, scored)` returns the alert records of a batch; `save(batch_id)` writes
    the levels to <checkpoint>/alert_levels/<batch_id>.json when they changed, before the
    batch's speed-view commit. A batch replayed after a restart loads the newest file of
    an earlier batch: the levels that batch started from.
    """

    KEEP_FILES = 3

    def __init__(self, checkpoint: Path):
        self.directory = checkpoint / "alert_levels"
        self.levels: dict[str, str] = {}
        self._as_of: int | None = None  # the batch whose end state `levels` holds
        self._changed = False

    def alerts(self, batch_id: int, scored: pd.DataFrame, settings: Settings) -> pd.DataFrame:
        """Alert records of a batch's scored view records; updates the levels."""
        if self._as_of != batch_id - 1:  # first batch of this process, or after a skip
            self.levels = self._load_before(batch_id)
        raised = []
        for record in scored.to_dict("records"):
            machine, level, cycle = (
                record["machine_id"],
                record["alert_level"],
                int(record["cycle"]),
            )
            previous = self.levels.get(machine)
            if alerting.rises(previous, level):
                raised.append(
                    record
                    | {
                        "kind": "alert",
                        "previous_level": previous,
                        "alert_id": alerting.alert_id(machine, cycle, level),
                        "threshold": alerting.threshold_of(level, settings),
                    }
                )
            if level != "unknown" and previous != level:
                self.levels[machine] = level
                self._changed = True
        self._as_of = batch_id
        return pd.DataFrame(raised)

    def save(self, batch_id: int) -> None:
        """Write the levels of this batch if they changed (atomically), keep a few files."""
        if not self._changed:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"{batch_id}.json"
        staging = target.with_suffix(".tmp")
        staging.write_text(json.dumps(self.levels, sort_keys=True))
        os.replace(staging, target)
        self._changed = False
        for old in self._batches()[: -self.KEEP_FILES]:
            (self.directory / f"{old}.json").unlink(missing_ok=True)

    def _batches(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.stem) for p in self.directory.glob("*.json") if p.stem.isdigit())

    def _load_before(self, batch_id: int) -> dict[str, str]:
        earlier = [b for b in self._batches() if b < batch_id]
        if not earlier:
            return {}
        return json.loads((self.directory / f"{earlier[-1]}.json").read_text())
