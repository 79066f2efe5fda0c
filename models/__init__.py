"""prognos models."""
