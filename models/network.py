"""The LSTM with two heads (RUL regression, fails-within-H probability) and its export."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

INPUT_NAME = "window"
OUTPUTS = ("rul", "fail_prob")


def make_deterministic(seed: int) -> None:
    """Same seed, same data -> same weights (CPU; TF deterministic ops)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build_model(window: int, n_features: int, config, name: str = "prognos_lstm") -> keras.Model:
    """Stacked LSTM -> dense -> {"rul": cycles (0..cap), "fail_prob": probability}."""
    inputs = keras.Input(shape=(window, n_features), name=INPUT_NAME)
    hidden = inputs
    if config.input_noise > 0:
        hidden = keras.layers.GaussianNoise(config.input_noise, name="input_noise")(hidden)
    for index, units in enumerate(config.lstm_units):
        last = index == len(config.lstm_units) - 1
        hidden = keras.layers.LSTM(units, return_sequences=not last, name=f"lstm_{index}")(hidden)
        hidden = keras.layers.Dropout(config.dropout, name=f"dropout_{index}")(hidden)
    hidden = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(hidden)
    scaled = keras.layers.Dense(1, name="rul_scaled")(hidden)
    if config.clip_output:
        scaled = keras.layers.ReLU(max_value=1.0, name="rul_bounded")(scaled)
    rul = keras.layers.Rescaling(float(config.feature.rul_cap), name="rul")(scaled)
    fail_prob = keras.layers.Dense(1, activation="sigmoid", name="fail_prob")(hidden)
    model = keras.Model(inputs, {"rul": rul, "fail_prob": fail_prob}, name=name)
    cap = float(config.feature.rul_cap)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss={"rul": "mse", "fail_prob": "binary_crossentropy"},
        # MSE in cycles^2 is scaled back to (RUL/cap)^2 so both heads weigh comparably.
        loss_weights={"rul": 1.0 / cap**2, "fail_prob": config.fail_loss_weight},
        metrics={"rul": [keras.metrics.RootMeanSquaredError(name="rmse")]},
    )
    return model


def average_models(members: list[keras.Model]) -> keras.Model:
    """One model whose outputs are the mean of the members' outputs."""
    inputs = keras.Input(shape=tuple(members[0].inputs[0].shape[1:]), name=INPUT_NAME)
    outputs = [member(inputs) for member in members]
    averaged = {
        name: keras.layers.Average(name=name)([output[name] for output in outputs])
        for name in OUTPUTS
    }
    return keras.Model(inputs, averaged, name="prognos_lstm_ensemble")


def predict(model: keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    outputs = model.predict(x, batch_size=1024, verbose=0)
    return {name: np.asarray(outputs[name]).reshape(-1) for name in OUTPUTS}


def export_saved_model(model: keras.Model, directory: Path, window: int, n_features: int) -> None:
    """SavedModel with signature serving_default: window[None,T,F] -> rul, fail_prob."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(window_tensor):
        outputs = model(window_tensor, training=False)
        return {
            "rul": tf.reshape(outputs["rul"], [-1]),
            "fail_prob": tf.reshape(outputs["fail_prob"], [-1]),
        }

    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec([None, window, n_features], tf.float32, name=INPUT_NAME)],
    )
    archive.write_out(str(directory), verbose=False)
