"""Helpers of the models tests: tiny configs and tiny SavedModel writers."""

from __future__ import annotations

from pathlib import Path

TINY = {"epochs": 3, "lstm_units": (16, 8), "dense_units": 8, "batch_size": 128, "patience": 2}


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
