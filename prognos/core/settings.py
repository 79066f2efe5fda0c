"""One place for configuration.

Every setting has a typed, documented default under the project's state directory and
can be overridden by an environment variable ``PROGNOS_<NAME>`` (for example
``PROGNOS_LAKE_ROOT``). The standard ``KAFKA_BOOTSTRAP_SERVERS`` and ``SPARK_MASTER``
variables are honoured too. An invalid value fails at start with a message naming the
setting and the value.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from prognos.core.errors import SettingsError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    """prognos settings; the README lists them with their defaults."""

    model_config = SettingsConfigDict(env_prefix="PROGNOS_", extra="forbid", frozen=True)

    state_dir: Path = Field(
        PROJECT_ROOT / ".state", description="Root of everything the project writes."
    )
    jars_dir: Path | None = Field(
        None, description="JVM jars from `make setup` (default: <state_dir>/jars)."
    )
    lake_root: Path | None = Field(None, description="Delta Lake root (default: <state_dir>/lake).")
    checkpoint_root: Path | None = Field(
        None, description="Streaming checkpoints (default: <state_dir>/checkpoints)."
    )
    registry_root: Path | None = Field(
        None, description="Model registry, TF Serving layout (default: <state_dir>/models)."
    )
    data_dir: Path = Field(
        PROJECT_ROOT / "data" / "cmapss", description="Vendored NASA C-MAPSS files."
    )
    fleet_spec: Path = Field(
        PROJECT_ROOT / "fleets" / "cmapss.toml",
        description="Fleet spec (TOML) of the machines: readings, valid ranges, features, "
        "labels and alert rule; the event contract and silver's quality suite derive from it.",
    )

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("PROGNOS_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka brokers, host:port[,host:port].",
    )
    kafka_external: bool = Field(
        default_factory=lambda: bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
        description="Use an external broker: `prognos up` starts none (default: true "
        "when KAFKA_BOOTSTRAP_SERVERS is set, false otherwise).",
    )
    kafka_controller_port: Port = Field(
        9093, description="KRaft controller port of the embedded broker."
    )
    kafka_heap: str = Field("512m", description="Max heap of the embedded broker.")
    kafka_cluster_size: int = Field(
        1,
        ge=1,
        le=9,
        description="Kafka nodes `prognos up` starts (1: the single broker; 3: a KRaft "
        "cluster of combined controller+broker nodes, node k on the first bootstrap port + 2k "
        "and the controller port + 2k unless kafka_bootstrap_servers names every node).",
    )
    kafka_replication_factor: int | None = Field(
        None,
        ge=1,
        description="Replication factor of the topics prognos creates (default: 1 for one "
        "broker, 3 for a cluster of 3 or more).",
    )
    kafka_min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of the topics prognos creates (default: 2 when "
        "replicated 3 times or more, else 1): with acks=all a write needs this many copies.",
    )
    kafka_client_timeout_ms: int = Field(
        30000,
        ge=1000,
        description="Request/API timeout of Spark's Kafka clients: an unreachable broker "
        "fails a streaming query after about this long instead of retrying for minutes.",
    )
    kafka_fetch_max_wait_ms: int = Field(
        10,
        ge=0,
        description="fetch.max.wait.ms of Spark's Kafka consumers. Spark asks only for "
        "offsets that exist, yet at the client's default (500 ms) each micro-batch's "
        "read waits ~0.5 s for a fetch held at the broker.",
    )
    topic_readings: str = Field("sensor-readings", description="Sensor events topic.")
    topic_readings_partitions: int = Field(
        2,
        ge=1,
        description="Partitions of the readings topic when prognos creates it: one per core "
        "suits the embedded stack (each partition is a Spark task in every speed micro-batch); "
        "raise it with the cluster.",
    )
    topic_alerts: str = Field("maintenance-alerts", description="Alerts topic.")
    topic_alerts_partitions: int = Field(
        1, ge=1, description="Partitions of the alerts topic when prognos creates it."
    )
    topic_dead_letter: str = Field("sensor-readings-dlq", description="Dead letters.")
    topic_dead_letter_partitions: int = Field(
        1, ge=1, description="Partitions of the dead-letter topic when prognos creates it."
    )

    spark_master: str = Field(
        "local[*]",
        validation_alias=AliasChoices("PROGNOS_SPARK_MASTER", "SPARK_MASTER"),
        description="Spark master URL: local[*], local[2], spark://host:7077, ...",
    )
    spark_driver_memory: str = Field("2g", description="Spark driver memory.")
    spark_shuffle_partitions: int = Field(4, ge=1, description="Shuffle partitions.")
    spark_ui: bool = Field(False, description="Start the Spark UI.")
    spark_cluster_port: Port = Field(
        7077, description="Master port of the local standalone cluster (infra/spark-cluster.sh)."
    )
    spark_cluster_ui_port: Port = Field(
        8090, description="Web UI port of the local standalone cluster's master."
    )
    spark_cluster_workers: int = Field(
        2, ge=1, description="Workers of the local standalone cluster."
    )
    spark_worker_cores: int = Field(1, ge=1, description="Cores each cluster worker offers.")
    spark_worker_memory: str = Field("1g", description="Memory each cluster worker offers.")
    lake_vacuum_floor_hours: float = Field(
        168.0,
        ge=0,
        description="VACUUM never uses a shorter retention than this (time travel window).",
    )
    lake_lock_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="How long a lake job waits for another job of the same lake to finish "
        "before it fails with LakeBusyError (the jobs of one lake never run concurrently).",
    )

    api_host: str = Field("127.0.0.1", description="Serving layer bind address.")
    api_port: Port = Field(8000, description="Serving layer HTTP port.")
    grpc_port: Port = Field(8500, description="Serving layer gRPC port.")
    airflow_port: Port = Field(8080, description="Airflow API server port.")

    batch_schedule: str = Field("@hourly", description="Schedule of the batch_layer DAG.")
    dag_retries: int = Field(2, ge=0, description="Retries of every prognos DAG task.")
    dag_retry_delay_s: float = Field(
        30.0, gt=0, description="First retry delay of a DAG task (doubles each retry)."
    )
    dag_max_retry_delay_s: float = Field(
        600.0, gt=0, description="Upper bound of a DAG task's exponential retry delay."
    )
    batch_max_failure_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Silver gate: max share of a run's rows that may fail "
        "validation (duplicates excluded) before the run fails.",
    )
    batch_future_tolerance_s: float = Field(
        300.0, ge=0, description="Event times up to this far in the future are accepted."
    )
    batch_range_margin: float = Field(
        0.1, ge=0, description="Sensor ranges: C-MAPSS training min/max widened by this x span."
    )
    gold_rul_cap: int = Field(
        125, ge=1, description="Gold label rul_target: the true RUL capped at this many cycles."
    )
    gold_horizon_cycles: int = Field(
        30, ge=1, description="Gold label fails_within_h: 1 when the true RUL <= this."
    )
    alert_red_rul: float = Field(15, ge=0, description="Alert level red when RUL <= this.")
    alert_amber_rul: float = Field(30, ge=0, description="Alert level amber when RUL <= this.")

    speed_watermark: str = Field(
        "10 minutes",
        description="Speed layer event-time watermark delay; events behind it "
        "go to the late_rows table.",
    )
    speed_trigger: str = Field(
        "500 milliseconds",
        description="Speed layer micro-batch interval (a batch that runs longer is followed "
        "at once by the next).",
    )
    speed_history_cycles: int = Field(
        100,
        ge=2,
        description="Cycles of history kept per machine in the speed layer's state "
        "(raised to what the champion's features and window need).",
    )
    speed_max_offsets_per_trigger: int | None = Field(
        None, ge=1, description="Cap of Kafka records per speed micro-batch (none: no cap)."
    )
    speed_state_partitions: int = Field(
        2,
        ge=1,
        description="State (shuffle) partitions of the speed query, fixed when its "
        "checkpoint is created: one per core suits local[N]; raise it on a cluster.",
    )
    speed_metrics_port: int = Field(
        9108, ge=0, le=65535, description="Prometheus port of the speed layer (0: no exporter)."
    )
    speed_metrics_host: str = Field(
        "127.0.0.1", description="Bind address of the speed layer's Prometheus exporter."
    )
    pushgateway_url: str | None = Field(
        None,
        description="Prometheus Pushgateway (host:port) batch and training jobs push their "
        "last-run metrics to (none: only the textfile <state>/run/metrics/<job>.prom).",
    )

    api_keys: str = Field(
        "",
        description="API keys as comma-separated `<sha256 hex of key>:<role>[:<name>]`; "
        "roles reader < operator < admin.",
    )
    api_keys_file: Path | None = Field(
        None, description="File of API keys, one `<sha256 hex>:<role>[:<name>]` per line."
    )
    api_tls_cert: Path | None = Field(None, description="TLS certificate (PEM): serve HTTPS.")
    api_tls_key: Path | None = Field(None, description="TLS private key (PEM) for the cert.")
    serving_refresh_s: float = Field(
        2.0, gt=0, description="Seconds between checks of Delta table and registry versions."
    )
    serving_model: str = Field(
        "rul_fd001",
        description="Model batch, speed and serving score with (named rul_<subset>).",
    )
    shadow_share: float = Field(
        0.1, ge=0, le=1, description="Share of predict calls shadow-scored by the challenger."
    )

    retrain_schedule: str = Field(
        "@weekly", description="Time schedule of the retrain DAG (it also runs on drift)."
    )
    retrain_on_gold: bool = Field(
        False, description="Also run the retrain DAG whenever the batch layer updates gold."
    )
    retrain_source: Literal["gold", "cmapss"] = Field(
        "gold",
        description="Training rows of the retrain DAG: the run-to-failure machines in gold, "
        "or the vendored C-MAPSS training files.",
    )
    retrain_epochs: int | None = Field(
        None, ge=1, description="Max epochs of a retrain (default: the model config's)."
    )
    retrain_machines: int | None = Field(
        None, ge=2, description="Retrain on the first N training machines only (tiny runs)."
    )
    retrain_seed: int = Field(42, description="Seed of the retrain DAG's training.")
    bless_margin: float = Field(
        0.0, ge=0, description="Validation RMSE a candidate must gain to replace the champion."
    )
    drift_window_hours: float = Field(
        24.0, gt=0, description="Drift compares gold rows of this many hours up to the newest."
    )
    drift_psi_threshold: float = Field(
        1.0,
        gt=0,
        description="A feature drifts when its PSI reaches this (the live fleet's natural "
        "mix of life stages gives up to ~0.5 against run-to-failure training data).",
    )
    drift_ks_threshold: float = Field(
        0.35, gt=0, le=1, description="...or when its Kolmogorov-Smirnov distance reaches this."
    )
    drift_min_rows: int = Field(
        200, ge=1, description="Fewer rows in the drift window: no decision (no drift)."
    )
    drift_min_features: int = Field(
        1, ge=1, description="Drifted features needed to emit the drift event (retrain)."
    )

    run_train_epochs: int = Field(
        8,
        ge=1,
        description="Max epochs of the shortened training `prognos run` does when the "
        "registry has no champion yet (a full training: `prognos train`).",
    )
    run_replay_rate: float = Field(
        100.0, gt=0, description="Events/s of the live test-fleet replay of `prognos run`."
    )
    run_machines: int | None = Field(
        None,
        ge=2,
        description="`prognos run` replays (and trains on) only the first N machines of "
        "each fleet (default: all).",
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @model_validator(mode="after")
    def _kafka_cluster(self) -> Settings:
        servers = self.kafka_bootstrap_servers.split(",")
        if self.kafka_cluster_size > 1 and not self.kafka_external:
            if len(servers) == 1:
                # derived, not set: node k listens on the first port + 2k
                host, _, port = servers[0].strip().rpartition(":")
                nodes = [f"{host}:{int(port) + 2 * k}" for k in range(self.kafka_cluster_size)]
                object.__setattr__(self, "kafka_bootstrap_servers", ",".join(nodes))
            elif len(servers) != self.kafka_cluster_size:
                raise ValueError(
                    f"kafka_cluster_size={self.kafka_cluster_size} needs one address per node "
                    f"in kafka_bootstrap_servers (or just the first), got {len(servers)}"
                )
        if not self.kafka_external and self.topic_replication_factor > self.kafka_cluster_size:
            raise ValueError(
                f"kafka_replication_factor={self.topic_replication_factor} exceeds "
                f"kafka_cluster_size={self.kafka_cluster_size}"
            )
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(
                f"kafka_min_insync_replicas={self.topic_min_insync_replicas} exceeds the "
                f"replication factor {self.topic_replication_factor}"
            )
        return self

    @field_validator("spark_master")
    @classmethod
    def _spark_master(cls, value: str) -> str:
        if not value.startswith(("local", "spark://", "yarn", "k8s://")):
            raise ValueError(f"expected local[N], spark://..., yarn or k8s://, got {value!r}")
        return value

    def _under_state(self, value: Path | None, name: str) -> Path:
        return Path(value) if value is not None else self.state_dir / name

    @property
    def jars(self) -> Path:
        return self._under_state(self.jars_dir, "jars")

    @property
    def lake(self) -> Path:
        return self._under_state(self.lake_root, "lake")

    @property
    def checkpoints(self) -> Path:
        return self._under_state(self.checkpoint_root, "checkpoints")

    @property
    def registry(self) -> Path:
        return self._under_state(self.registry_root, "models")

    @property
    def audit_log(self) -> Path:
        """Append-only log of admin actions of the serving layer."""
        return self.run_dir / "audit.log"

    @property
    def run_dir(self) -> Path:
        """PID files, logs and broker data of the embedded stack."""
        return self.state_dir / "run"

    @property
    def topic_replication_factor(self) -> int:
        if self.kafka_replication_factor is not None:
            return self.kafka_replication_factor
        return 3 if self.kafka_cluster_size >= 3 else 1

    @property
    def topic_min_insync_replicas(self) -> int:
        if self.kafka_min_insync_replicas is not None:
            return self.kafka_min_insync_replicas
        return 2 if self.topic_replication_factor >= 3 else 1

    @property
    def kafka_is_external(self) -> bool:
        """True when the broker is external, so none is started here."""
        return self.kafka_external


def settings_env(settings: Settings) -> dict[str, str]:
    """PROGNOS_* variables that make a child process read the same settings."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"PROGNOS_{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return env


def load_settings(**overrides) -> Settings:
    """Read settings from the environment; raise SettingsError naming bad values."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "settings"
        env = f"PROGNOS_{name.upper()}"
        problems.append(f"{name} ({env}) = {item.get('input')!r}: {item['msg']}")
    return "invalid setting: " + "; ".join(problems)


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()
