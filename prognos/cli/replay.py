"""`prognos replay` (filled in by the replayer)."""

commands: list = []
