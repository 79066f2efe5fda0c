"""Every Delta table of the pipeline in one place: name, location, schema, keys, owner.

A schema is a tuple of `Column(name, type)` with a small type vocabulary
(string, binary, int, long, double, boolean, timestamp, date, array<string>,
map<string,long>, map<int,long>, map<string,double>, map<string,string>), from which both
the Spark StructType and the pyarrow schema are derived, so no schema is spelled twice.

The gold feature table's columns come from the shared feature code
(`prognos.core.features.FEATURE_COLUMNS`); `gold_features_spec(columns)` builds it for
any feature list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prognos.core.errors import PrognosError, SchemaMismatchError, UnknownTableError
from prognos.core.settings import Settings

# Table properties every pipeline table gets: delta-rs (the serving layer's reader) must
# be able to read every table, so no deletion vectors, no column mapping, classic
# checkpoints, and protocol versions delta-rs 1.x supports.
TABLE_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.columnMapping.mode": "none",
    "delta.checkpointPolicy": "classic",
    "delta.minReaderVersion": "1",
    "delta.minWriterVersion": "2",
}

SCALAR_TYPES = ("string", "binary", "int", "long", "double", "boolean", "timestamp", "date")


class TableLocationError(PrognosError):
    """A table's location holds something that is not that Delta table."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True

    def __post_init__(self) -> None:
        _check_type(self.type)


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    owner_layer: str = "spark_jobs"
    description: str = ""
    properties: Mapping[str, str] = field(default_factory=lambda: dict(TABLE_PROPERTIES))

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    @property
    def spark_schema(self):
        """The table's schema as a pyspark StructType."""
        from pyspark.sql.types import StructField, StructType

        return StructType(
            [StructField(c.name, spark_type(c.type), c.nullable) for c in self.columns]
        )

    @property
    def arrow_schema(self):
        """The table's schema as a pyarrow schema (as delta-rs returns it)."""
        import pyarrow as pa

        return pa.schema([pa.field(c.name, arrow_type(c.type), c.nullable) for c in self.columns])

    def path(self, settings: Settings) -> Path:
        return table_path(self.name, settings)


# --- types ------------------------------------------------------------------------------


def _parse_type(type_name: str) -> tuple[str, tuple[str, ...]]:
    type_name = type_name.replace(" ", "")
    if type_name.startswith("array<") and type_name.endswith(">"):
        return "array", (type_name[6:-1],)
    if type_name.startswith("map<") and type_name.endswith(">"):
        key, _, value = type_name[4:-1].partition(",")
        return "map", (key, value)
    return type_name, ()


def _check_type(type_name: str) -> None:
    kind, inner = _parse_type(type_name)
    if kind in ("array", "map"):
        if not inner or not all(t in SCALAR_TYPES for t in inner):
            raise ValueError(f"unsupported column type {type_name!r}")
    elif kind not in SCALAR_TYPES:
        raise ValueError(f"unsupported column type {type_name!r}")


def spark_type(type_name: str):
    from pyspark.sql import types as T

    scalars = {
        "string": T.StringType(),
        "binary": T.BinaryType(),
        "int": T.IntegerType(),
        "long": T.LongType(),
        "double": T.DoubleType(),
        "boolean": T.BooleanType(),
        "timestamp": T.TimestampType(),
        "date": T.DateType(),
    }
    kind, inner = _parse_type(type_name)
    if kind == "array":
        return T.ArrayType(scalars[inner[0]], True)
    if kind == "map":
        return T.MapType(scalars[inner[0]], scalars[inner[1]], True)
    return scalars[kind]


def arrow_type(type_name: str):
    import pyarrow as pa

    scalars = {
        "string": pa.string(),
        "binary": pa.binary(),
        "int": pa.int32(),
        "long": pa.int64(),
        "double": pa.float64(),
        "boolean": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "date": pa.date32(),
    }
    kind, inner = _parse_type(type_name)
    if kind == "array":
        return pa.list_(pa.field("element", scalars[inner[0]], True))
    if kind == "map":
        return pa.map_(scalars[inner[0]], pa.field("value", scalars[inner[1]], True))
    return scalars[kind]


def _cols(*pairs: tuple[str, str]) -> tuple[Column, ...]:
    return tuple(Column(name, type_name) for name, type_name in pairs)


# --- the catalog ------------------------------------------------------------------------

SETTING_COLUMNS = tuple((f"setting_{i}", "double") for i in range(1, 4))
SENSOR_COLUMNS = tuple((f"sensor_{i}", "double") for i in range(1, 22))
KAFKA_COORDINATES = (("kafka_partition", "int"), ("kafka_offset", "long"))

BRONZE = TableSpec(
    "bronze",
    _cols(
        ("key", "binary"),
        ("value", "binary"),
        ("topic", "string"),
        ("partition", "int"),
        ("offset", "long"),
        ("kafka_timestamp", "timestamp"),
        ("ingest_time", "timestamp"),
        ("ingest_date", "date"),
    ),
    partition_by=("ingest_date",),
    keys=("topic", "partition", "offset"),
    owner_layer="spark_jobs",
    description="Raw Kafka records with their coordinates, appended exactly once.",
)

SILVER = TableSpec(
    "silver",
    _cols(
        ("machine_id", "string"),
        ("cycle", "int"),
        ("event_time", "timestamp"),
        *SETTING_COLUMNS,
        *SENSOR_COLUMNS,
        ("source", "string"),
        ("schema_version", "int"),
        *KAFKA_COORDINATES,
        ("ingest_time", "timestamp"),
    ),
    keys=("machine_id", "cycle"),
    owner_layer="spark_jobs",
    description="Parsed, validated, deduplicated readings (one row per machine and cycle).",
)

QUARANTINE = TableSpec(
    "quarantine",
    _cols(
        ("key", "binary"),
        ("value", "binary"),
        ("topic", "string"),
        *KAFKA_COORDINATES,
        ("reasons", "array<string>"),
        ("run_id", "string"),
        ("quarantined_at", "timestamp"),
    ),
    keys=("topic", "kafka_partition", "kafka_offset"),
    owner_layer="spark_jobs",
    description="Bronze records that failed validation, with every reason.",
)

VALIDATION_RESULTS = TableSpec(
    "validation_results",
    _cols(
        ("run_id", "string"),
        ("rule", "string"),
        ("passed", "boolean"),
        ("unexpected_count", "long"),
        ("element_count", "long"),
        ("evaluated_at", "timestamp"),
    ),
    keys=("run_id", "rule"),
    owner_layer="spark_jobs",
    description="One row per validation rule and batch run.",
)

MACHINE_STATE = TableSpec(
    "machine_state",
    _cols(
        ("machine_id", "string"),
        ("last_cycle", "int"),
        ("last_event_time", "timestamp"),
        ("readings_count", "long"),
        ("predicted_rul", "double"),
        ("model_version", "string"),
        ("run_id", "string"),
        # added with batch scoring: the alert level of predicted_rul, the latest health
        # index, the latest readings (settings + sensors) and health features of the
        # latest cycle (health index rolling mean/std/slope per window).
        ("alert_level", "string"),
        ("health_index", "double"),
        ("sensors", "map<string,double>"),
        ("features", "map<string,double>"),
    ),
    keys=("machine_id",),
    owner_layer="spark_jobs",
    description="Batch view: latest state, health and predicted RUL per machine.",
)

MACHINE_HISTORY = TableSpec(
    "machine_history",
    _cols(
        ("machine_id", "string"),
        ("cycle", "int"),
        ("event_time", "timestamp"),
        *SETTING_COLUMNS,
        *SENSOR_COLUMNS,
    ),
    keys=("machine_id", "cycle"),
    owner_layer="spark_jobs",
    description="Batch view: silver's readings per machine, sorted by machine and event time "
    "and cut into files by machine range, so that one machine's time range reads a few row "
    "groups (Delta file statistics, then Parquet ones) instead of the master dataset.",
)

FLEET_SUMMARY = TableSpec(
    "fleet_summary",
    _cols(
        ("run_id", "string"),
        ("machines", "long"),
        ("readings", "long"),
        ("at_risk", "long"),
        ("min_predicted_rul", "double"),
        ("mean_predicted_rul", "double"),
        ("max_event_time", "timestamp"),
        ("computed_at", "timestamp"),
        # added with batch scoring: machines per alert level, RUL distribution
        ("machines_by_level", "map<string,long>"),
        ("rul_p10", "double"),
        ("rul_p50", "double"),
        ("rul_p90", "double"),
        ("max_predicted_rul", "double"),
    ),
    keys=("run_id",),
    owner_layer="spark_jobs",
    description="Batch view: fleet-wide figures of one batch run.",
)

BATCH_MANIFEST = TableSpec(
    "batch_manifest",
    _cols(
        ("run_id", "string"),
        ("published_at", "timestamp"),
        ("table_versions", "map<string,long>"),
        ("partition_offsets", "map<int,long>"),
        ("max_event_time", "timestamp"),
        ("rows_covered", "long"),
        ("details", "string"),
    ),
    keys=("run_id",),
    owner_layer="spark_jobs",
    description="Written last by a publication: the Delta version of each batch view and "
    "the exact boundary (next Kafka offset per partition, max event time) they cover.",
)

SPEED_VIEW = TableSpec(
    "speed_view",
    _cols(
        ("machine_id", "string"),
        ("last_cycle", "int"),
        ("last_event_time", "timestamp"),
        ("readings_count", "long"),
        ("predicted_rul", "double"),
        ("model_version", "string"),
        ("batch_id", "long"),
        ("updated_at", "timestamp"),
        # written by the speed layer: alert level, latest readings and features, and the
        # Kafka offsets of the readings not yet covered by the batch manifest (expiry).
        ("alert_level", "string"),
        ("sensors", "map<string,double>"),
        ("features", "map<string,double>"),
        ("kafka_partition", "int"),
        ("kafka_offset", "long"),
        ("pending_offsets", "array<long>"),
    ),
    keys=("machine_id",),
    owner_layer="speed_layer",
    description="Speed view: per machine, the readings newer than the batch boundary.",
)

ALERTS = TableSpec(
    "alerts",
    _cols(
        ("alert_id", "string"),
        ("machine_id", "string"),
        ("cycle", "int"),
        ("event_time", "timestamp"),
        ("predicted_rul", "double"),
        ("threshold", "double"),
        ("model_version", "string"),
        ("raised_at", "timestamp"),
        ("alert_level", "string"),
        ("previous_level", "string"),
    ),
    keys=("alert_id",),
    owner_layer="speed_layer",
    description="Maintenance alerts raised by the speed layer (also sent to Kafka).",
)

LATE_ROWS = TableSpec(
    "late_rows",
    _cols(
        ("machine_id", "string"),
        ("cycle", "int"),
        ("event_time", "timestamp"),
        ("value", "binary"),
        *KAFKA_COORDINATES,
        ("watermark", "timestamp"),
        ("recorded_at", "timestamp"),
    ),
    keys=("kafka_partition", "kafka_offset"),
    owner_layer="speed_layer",
    description="Events that arrived behind the watermark, kept with their coordinates.",
)

DRIFT_REPORT = TableSpec(
    "drift_report",
    _cols(
        ("run_id", "string"),
        ("feature", "string"),
        ("statistic", "string"),
        ("reference_value", "double"),
        ("current_value", "double"),
        ("score", "double"),
        ("drifted", "boolean"),
        ("computed_at", "timestamp"),
        # written by the drift job (models.drift): reference_value/current_value are the
        # feature's training and window means, score the statistic (psi or ks).
        ("model", "string"),
        ("model_version", "long"),
        ("threshold", "double"),
        ("window_start", "timestamp"),
        ("window_end", "timestamp"),
        ("rows", "long"),
    ),
    keys=("run_id", "feature", "statistic"),
    owner_layer="models",
    description="Feature drift of recent gold rows against the champion's training "
    "reference: PSI and KS per feature and window.",
)

GOLD_KEY_COLUMNS = (
    ("machine_id", "string"),
    ("cycle", "int"),
    ("event_time", "timestamp"),
    ("condition", "int"),
)
# Labels where the true RUL is known (null elsewhere): RUL, RUL capped, fails within H.
GOLD_LABEL_COLUMNS = (("rul", "double"), ("rul_target", "double"), ("fails_within_h", "double"))


def gold_features_spec(feature_columns: Iterable[str]) -> TableSpec:
    """The gold feature table for a list of (double) feature columns, then the labels."""
    features = tuple((name, "double") for name in feature_columns)
    return TableSpec(
        "gold_features",
        _cols(*GOLD_KEY_COLUMNS, *features, *GOLD_LABEL_COLUMNS),
        keys=("machine_id", "cycle"),
        owner_layer="spark_jobs",
        description="Model features per machine and cycle, computed by the shared "
        "feature code (prognos.core.features).",
    )


def _feature_columns() -> tuple[str, ...]:
    try:
        from prognos.core.features import FEATURE_COLUMNS
    except ImportError:  # the feature module needs numpy and pandas: without them, none
        return ()
    return tuple(FEATURE_COLUMNS)


def _catalog() -> dict[str, TableSpec]:
    specs = [
        BRONZE,
        SILVER,
        QUARANTINE,
        VALIDATION_RESULTS,
        gold_features_spec(_feature_columns()),
        MACHINE_STATE,
        MACHINE_HISTORY,
        FLEET_SUMMARY,
        BATCH_MANIFEST,
        SPEED_VIEW,
        ALERTS,
        LATE_ROWS,
        DRIFT_REPORT,
    ]
    return {spec.name: spec for spec in specs}


TABLES: dict[str, TableSpec] = _catalog()


def get_table(name: str | TableSpec) -> TableSpec:
    """The spec of a catalog table; UnknownTableError naming the known tables."""
    if isinstance(name, TableSpec):
        return name
    try:
        return TABLES[name]
    except KeyError:
        known = ", ".join(sorted(TABLES))
        raise UnknownTableError(f"unknown table {name!r}; known tables: {known}") from None


def table_path(name: str | TableSpec, settings: Settings) -> Path:
    """Location of a table under the lake root."""
    spec = get_table(name)
    return settings.lake / spec.name


# --- schema enforcement -----------------------------------------------------------------


def schema_differences(actual, expected) -> list[str]:
    """Differences between two Spark StructTypes, one line per column (nullability aside)."""
    actual_types = {f.name: f.dataType for f in actual.fields}
    expected_types = {f.name: f.dataType for f in expected.fields}
    problems = [
        f"missing column {name} ({t.simpleString()})"
        for name, t in expected_types.items()
        if name not in actual_types
    ]
    problems += [
        f"extra column {name} ({t.simpleString()})"
        for name, t in actual_types.items()
        if name not in expected_types
    ]
    for name, expected_type in expected_types.items():
        actual_type = actual_types.get(name)
        if actual_type is not None and not _same_type(actual_type, expected_type):
            problems.append(
                f"column {name}: type {actual_type.simpleString()}, "
                f"expected {expected_type.simpleString()}"
            )
    return problems


def _same_type(left, right) -> bool:
    return left.simpleString() == right.simpleString()


def check_schema(df, name: str | TableSpec, allow_evolution: bool = False) -> None:
    """Raise SchemaMismatchError listing the columns where df differs from the table.

    With allow_evolution, added or missing columns are accepted (Delta merges them);
    a changed column type never is.
    """
    spec = get_table(name)
    problems = schema_differences(df.schema, spec.spark_schema)
    if allow_evolution:
        problems = [p for p in problems if p.startswith("column ")]
    if problems:
        raise SchemaMismatchError(
            f"schema of the write does not match table {spec.name!r}: " + "; ".join(problems)
        )


def is_delta_table(path: Path) -> bool:
    """True when path holds a Delta log with at least one commit or checkpoint."""
    log = Path(path) / "_delta_log"
    return log.is_dir() and (any(log.glob("*.json")) or any(log.glob("*.checkpoint*.parquet")))


def _check_location(spec: TableSpec, path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise TableLocationError(f"table {spec.name!r}: {path} is a file, not a Delta table")
    if path.is_dir() and not is_delta_table(path) and any(path.iterdir()):
        raise TableLocationError(
            f"table {spec.name!r}: {path} holds files but no Delta log (_delta_log); "
            "move them away or point PROGNOS_LAKE_ROOT elsewhere"
        )


# (path, spec) pairs whose existing table was checked in this process: Delta itself refuses
# later schema changes (autoMerge is off), so checking once per process is enough.
_VERIFIED: set[tuple[str, tuple[Column, ...]]] = set()


def create_table(spark, name: str | TableSpec, settings: Settings) -> Path:
    """Create the table (Delta, catalog properties) if missing; check an existing one.

    An existing table whose schema differs from the catalog raises SchemaMismatchError.
    """
    from delta.tables import DeltaTable

    spec = get_table(name)
    path = table_path(spec, settings)
    _check_location(spec, path)
    if is_delta_table(path):
        if (str(path), spec.columns) not in _VERIFIED:
            _add_new_columns(spark, spec, path)
            check_schema(spark.read.format("delta").load(str(path)), spec)
            _VERIFIED.add((str(path), spec.columns))
        return path
    builder = DeltaTable.createIfNotExists(spark).location(str(path)).addColumns(spec.spark_schema)
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    for key, value in spec.properties.items():
        builder = builder.property(key, value)
    if spec.description:
        builder = builder.comment(spec.description)
    builder.execute()
    return path


def _add_new_columns(spark, spec: TableSpec, path: Path) -> list[str]:
    """Bring a table written by an older release up to the catalog: when the catalog only
    adds columns (no extra column, no changed type), ALTER TABLE ADD COLUMNS (null in old
    rows). Any other difference is left for check_schema to refuse."""
    existing = spark.read.format("delta").load(str(path)).schema
    problems = schema_differences(existing, spec.spark_schema)
    if not problems or not all(p.startswith("missing column ") for p in problems):
        return []
    present = set(existing.fieldNames())
    added = [c for c in spec.columns if c.name not in present]
    columns = ", ".join(f"`{c.name}` {spark_type(c.type).simpleString()}" for c in added)
    spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")
    return [c.name for c in added]


def create_tables(spark, settings: Settings, names: Iterable[str] | None = None) -> list[Path]:
    return [create_table(spark, name, settings) for name in (names or TABLES)]
