"""Helpers of the models tests: tiny configs and tiny SavedModel writers."""

from __future__ import annotations

from pathlib import Path

TINY = {
    "epochs": 3,
    "lstm_units": (16, 8),
    "dense_units": 8,
    "batch_size": 128,
    "patience": 2,
    "ensemble": 1,
}


def tiny_config(subset: str = "FD001", **overrides):
    from models.config import TrainConfig

    return TrainConfig.for_subset(subset, **{**TINY, **overrides})


def write_constant_saved_model(rul: float, window: int = 4, features: int = 3):
    """A writer for `register`: a real SavedModel answering a constant RUL."""

    def write(directory: Path) -> None:
        import tensorflow as tf

        class Constant(tf.Module):
            @tf.function(
                input_signature=[tf.TensorSpec([None, window, features], tf.float32, "window")]
            )
            def serve(self, window_tensor):
                count = tf.shape(window_tensor)[0]
                return {
                    "rul": tf.fill([count], tf.constant(rul, tf.float32)),
                    "fail_prob": tf.fill([count], tf.constant(0.0, tf.float32)),
                }

        module = Constant()
        tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})

    return write


def metadata_with(validation_rmse: float) -> dict:
    return {"params": {}, "metrics": {"validation": {"rmse": validation_rmse}}}


def gold_rows(machines, shift_sigma: float = 0.0, hours_ago: float = 0.0, sensor="sensor_4"):
    """Gold feature rows of FD001 training machines (the shared feature code), their last
    cycle `hours_ago` before now, one minute per cycle; `sensor` shifted by N std."""
    from datetime import UTC, datetime, timedelta

    import pandas as pd

    from prognos.core.data import load_cmapss
    from prognos.core.events import machine_id_for
    from prognos.core.features import compute_features_for_frame, fit_condition_model

    train = load_cmapss("FD001", "train")
    raw = train[train["machine_id"].isin(list(machines))].copy()
    raw[sensor] += shift_sigma * train[sensor].std()
    frame = compute_features_for_frame(raw, fit_condition_model(train))
    last = frame.groupby("machine_id")["cycle"].transform("max")
    end = datetime.now(UTC) - timedelta(hours=hours_ago)
    frame["event_time"] = end - pd.to_timedelta(last - frame["cycle"], unit="min")
    frame["machine_id"] = [machine_id_for("FD001", "train", int(m)) for m in frame["machine_id"]]
    return frame


def write_gold(settings, frame) -> None:
    """Overwrite the gold_features Delta table (delta-rs) with frame in the catalog schema."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from prognos.core.tables import get_table

    spec = get_table("gold_features")
    columns = {name: frame[name] if name in frame.columns else None for name in spec.column_names}
    table = pa.table(
        {
            name: pa.array(values, type=spec.arrow_schema.field(name).type)
            if values is not None
            else pa.nulls(len(frame), spec.arrow_schema.field(name).type)
            for name, values in columns.items()
        }
    )
    path = spec.path(settings)
    path.mkdir(parents=True, exist_ok=True)
    write_deltalake(str(path), table, mode="overwrite", schema_mode="overwrite")


def register_reference_champion(registry, model: str = "rul_fd001", validation_rmse=1000.0):
    """A constant SavedModel champion whose metadata holds the drift reference of the
    FD001 training machines (what `prognos train` records)."""
    from models.config import TrainConfig
    from models.dataset import training_frame
    from models.drift import REFERENCE_KEY, feature_reference

    config = TrainConfig.for_subset("FD001")
    frames = training_frame("FD001", config.feature)
    metadata = {
        **metadata_with(validation_rmse),
        "params": config.to_dict(),
        REFERENCE_KEY: feature_reference(frames.train, config.input_columns),
    }
    window, features = config.window, len(config.input_columns)
    version = registry.register(model, write_constant_saved_model(50.0, window, features), metadata)
    registry.promote(model, version)
    return version
