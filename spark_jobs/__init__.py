"""prognos spark jobs."""
