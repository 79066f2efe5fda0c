"""prognos: a Lambda-architecture pipeline for predictive maintenance."""

__version__ = "0.1.0"
