"""prognos serving layer."""
