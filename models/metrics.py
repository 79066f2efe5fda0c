"""Evaluation figures of the C-MAPSS protocol."""

from __future__ import annotations

import numpy as np


def rmse(predicted, true) -> float:
    d = np.asarray(predicted, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sqrt(np.mean(d**2)))


def mae(predicted, true) -> float:
    d = np.asarray(predicted, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.mean(np.abs(d)))


def phm08_score(predicted, true) -> float:
    """PHM08 score: late predictions (d > 0) cost more than early ones."""
    d = np.asarray(predicted, dtype=np.float64) - np.asarray(true, dtype=np.float64)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1, np.exp(d / 10.0) - 1)))


def classification(predicted_positive, actual_positive) -> dict:
    """Precision, recall and F1 of a binary decision (0 when undefined)."""
    p = np.asarray(predicted_positive, dtype=bool)
    a = np.asarray(actual_positive, dtype=bool)
    tp, fp, fn = int(np.sum(p & a)), int(np.sum(p & ~a)), int(np.sum(~p & a))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def evaluate(rul_predicted, fail_prob, rul_true, horizon: int, threshold: float = 0.5) -> dict:
    """RMSE, MAE, PHM08 score and fails-within-horizon precision/recall/F1."""
    rul_true = np.asarray(rul_true, dtype=np.float64)
    figures = {
        "rmse": rmse(rul_predicted, rul_true),
        "mae": mae(rul_predicted, rul_true),
        "score": phm08_score(rul_predicted, rul_true),
        "count": len(rul_true),
    }
    figures[f"fails_within_{horizon}"] = classification(
        np.asarray(fail_prob) >= threshold, rul_true <= horizon
    )
    return figures
