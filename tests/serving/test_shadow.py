"""Champion vs challenger against the truth: the error arithmetic of shadow scoring."""

from __future__ import annotations

import numpy as np
import pytest

from serving_layer.models import ShadowStats, errors_vs_truth

pytestmark = pytest.mark.unit

TRUTH = {("FD001-test-0001", 31): 112.0, ("FD001-test-0002", 40): 98.0}


def true_rul(machine_id: str, cycle: int) -> float | None:
    return TRUTH.get((machine_id, cycle))


def test_errors_only_on_rows_with_known_truth():
    machines = [("FD001-test-0001", 31), None, ("m9", 3), ("FD001-test-0002", 40)]
    outputs = {
        "champion": {"rul": np.array([[100.0], [1.0], [2.0], [108.0]])},  # (n, 1) like Keras
        "challenger": {"rul": np.array([115.0, 1.0, 2.0, 90.0])},
    }
    errors = errors_vs_truth(outputs, machines, true_rul)
    np.testing.assert_allclose(errors["champion"], [-12.0, 10.0])
    np.testing.assert_allclose(errors["challenger"], [3.0, -8.0])


def test_no_truth_no_errors():
    outputs = {"champion": {"rul": np.ones(2)}, "challenger": {"rul": np.ones(2)}}
    assert errors_vs_truth(outputs, None, true_rul) == {}
    assert errors_vs_truth(outputs, [("m1", 1), None], true_rul) == {}
    without_rul = {"champion": {"score": np.ones(1)}, "challenger": {"score": np.ones(1)}}
    assert errors_vs_truth(without_rul, [("FD001-test-0001", 31)], true_rul) == {}


def test_stats_report_rmse_mae_bias_per_role():
    stats = ShadowStats(champion=1, challenger=2)
    stats.add({"rul": np.array([1.0, 2.0])}, {"rul": np.array([2.0, 4.0])})
    stats.add_truth({"champion": np.array([-12.0, 10.0]), "challenger": np.array([3.0, -8.0])})
    report = stats.to_dict()
    assert report["mean_abs_disagreement"] == {"rul": 1.5}
    assert report["error_vs_truth"]["champion"] == {
        "rows": 2,
        "rmse": (244 / 2) ** 0.5,
        "mae": 11.0,
        "bias": -1.0,
    }
    assert report["error_vs_truth"]["challenger"]["mae"] == 5.5
    assert ShadowStats().to_dict()["error_vs_truth"]["champion"] == {
        "rows": 0,
        "rmse": None,
        "mae": None,
        "bias": None,
    }
