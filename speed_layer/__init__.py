"""prognos speed layer."""
