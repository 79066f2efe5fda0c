"""prognos dags."""
