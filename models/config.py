"""Training configuration: one typed place for every model parameter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from prognos.core.data import SUBSETS, UnknownDatasetError
from prognos.core.features import HEALTH, FeatureConfig, normalised_columns

WINDOW_PER_SUBSET = {"FD001": 30, "FD002": 50, "FD003": 30, "FD004": 50}
# The six-condition subsets have ~3x the windows, each ~1.7x longer. Neighbouring windows
# overlap in all but one cycle: one member on every third window trains an FD002 seed in
# ~7 min on 2 cores (test RMSE 13.68 ± 0.54). Validation and test use every window.
ENSEMBLE_PER_SUBSET = {"FD002": 1, "FD004": 1}
TRAIN_STRIDE_PER_SUBSET = {"FD002": 3, "FD004": 3}


def default_input_columns(config: FeatureConfig) -> tuple[str, ...]:
    """Model inputs: per-condition z-scored sensors, their 10-cycle means, health features."""
    smoothed = [f"{sensor}_mean_10" for sensor in config.sensors]
    return (*normalised_columns(config), *smoothed, HEALTH, f"{HEALTH}_mean_10")


@dataclass(frozen=True)
class TrainConfig:
    subset: str = "FD001"
    window: int = 30
    epochs: int = 60
    batch_size: int = 256
    learning_rate: float = 1e-3
    lstm_units: tuple[int, ...] = (64, 32)
    dense_units: int = 16
    dropout: float = 0.2
    ensemble: int = 2  # members trained with seeds seed, seed+1, ...; outputs averaged
    train_stride: int = 1  # training windows end every N cycles (each machine's last kept)
    clip_output: bool = False  # bound predicted RUL to [0, rul_cap]
    input_noise: float = 0.0  # std of Gaussian noise added to inputs while training
    patience: int = 15
    lr_patience: int = 5
    validation_share: float = 0.15
    seed: int = 42
    machines: int | None = None  # train on the first N training machines (tiny runs)
    fail_loss_weight: float = 0.05
    feature: FeatureConfig = field(default_factory=FeatureConfig)
    input_columns: tuple[str, ...] = ()

    def __post_init__(self):
        if self.subset not in SUBSETS:
            raise UnknownDatasetError(f"unknown subset {self.subset!r}: expected {SUBSETS}")
        if not self.input_columns:
            object.__setattr__(self, "input_columns", default_input_columns(self.feature))

    @classmethod
    def for_subset(cls, subset: str, **overrides) -> TrainConfig:
        overrides.setdefault("window", WINDOW_PER_SUBSET.get(subset, 30))
        overrides.setdefault("ensemble", ENSEMBLE_PER_SUBSET.get(subset, cls.ensemble))
        overrides.setdefault("train_stride", TRAIN_STRIDE_PER_SUBSET.get(subset, cls.train_stride))
        return cls(subset=subset, **overrides)

    def with_(self, **changes) -> TrainConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["feature"] = self.feature.to_dict()
        return data
