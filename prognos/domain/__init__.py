"""The domain core: the rules every layer applies, with no I/O framework underneath.

It holds the fleet spec (what a fleet's machines report and how they are judged) and the
event contract derived from it. It imports nothing of the project outside itself and none
of pyspark, tensorflow, deltalake, kafka, fastapi, grpc, great_expectations or airflow
(import-linter contracts in pyproject.toml), so its tests run in seconds without a JVM,
a broker or a model. The layers and adapters call it; none re-implements its rules.
"""
