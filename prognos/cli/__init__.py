"""The `prognos` command line: thin commands over the layers' importable functions."""
