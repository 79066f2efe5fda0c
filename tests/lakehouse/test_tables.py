"""Table catalog: schemas, creation with delta-rs-readable properties, schema enforcement."""

from __future__ import annotations

import pytest
from lakehelp import assert_same_through_delta_rs

from prognos.core import lake, tables
from prognos.core.errors import SchemaMismatchError, SetupMissingError, UnknownTableError
from prognos.core.features import FEATURE_COLUMNS
from prognos.core.settings import load_settings
from prognos.core.spark import spark_conf

PIPELINE_TABLES = {
    "bronze", "silver", "quarantine", "validation_results", "gold_features", "machine_state",
    "machine_history", "fleet_summary", "batch_manifest", "speed_view", "alerts", "late_rows",
    "drift_report",
}  # fmt: skip


def test_catalog_names_every_pipeline_table_once(tmp_path):
    settings = load_settings(state_dir=tmp_path)
    assert set(tables.TABLES) == PIPELINE_TABLES
    paths = {tables.table_path(name, settings) for name in tables.TABLES}
    assert len(paths) == len(tables.TABLES)
    assert all(path.parent == settings.lake for path in paths)


def test_spark_and_arrow_schemas_come_from_one_column_list():
    for spec in tables.TABLES.values():
        assert spec.spark_schema.fieldNames() == spec.column_names
        assert spec.arrow_schema.names == spec.column_names
        assert set(spec.keys) <= set(spec.column_names), spec.name
        assert set(spec.partition_by) <= set(spec.column_names), spec.name


def test_gold_features_follow_the_shared_feature_definition():
    gold = tables.get_table("gold_features")
    labels = ["rul", "rul_target", "fails_within_h"]  # labels where the true RUL is known
    assert gold.column_names[4:] == [*FEATURE_COLUMNS, *labels]
    custom = tables.gold_features_spec(["a", "b"])
    assert custom.column_names == [
        "machine_id", "cycle", "event_time", "condition", "a", "b", *labels,
    ]  # fmt: skip


def test_unknown_table_name_lists_the_known_ones(tmp_path):
    with pytest.raises(UnknownTableError, match=r"unknown table 'bronz'.*known tables: alerts"):
        tables.get_table("bronz")
    with pytest.raises(UnknownTableError):
        tables.table_path("nope", load_settings(state_dir=tmp_path))


def test_unsupported_column_type_is_refused():
    with pytest.raises(ValueError, match="unsupported column type 'decimal'"):
        tables.Column("x", "decimal")


def test_missing_jars_name_make_setup(tmp_path):
    settings = load_settings(state_dir=tmp_path, jars_dir=tmp_path / "no-jars")
    with pytest.raises(SetupMissingError, match=r"delta-spark.*run `make setup`"):
        spark_conf(settings)


def test_every_table_is_created_readable_by_delta_rs(spark, lake_settings):
    """Protocol (1, 2) without reader features: delta-rs reads every table."""
    from deltalake import DeltaTable

    tables.create_tables(spark, lake_settings)
    for name, spec in tables.TABLES.items():
        delta = DeltaTable(str(tables.table_path(name, lake_settings)))
        protocol = delta.protocol()
        assert protocol.min_reader_version == 1, name
        assert not protocol.reader_features, name
        config = delta.metadata().configuration
        assert config["delta.enableDeletionVectors"] == "false"
        assert config["delta.columnMapping.mode"] == "none"
        assert config["delta.checkpointPolicy"] == "classic"
        assert lake.read_table_arrow(name, lake_settings).schema.equals(spec.arrow_schema), name
        assert delta.metadata().partition_columns == list(spec.partition_by)
    # creating again is a no-op that checks the existing schema
    tables.create_tables(spark, lake_settings)


def _fleet_row(run_id: str, **changes):
    from datetime import UTC, datetime

    row = {
        "run_id": run_id,
        "machines": 3,
        "readings": 30,
        "at_risk": 1,
        "min_predicted_rul": 12.5,
        "mean_predicted_rul": 40.0,
        "max_event_time": datetime(2026, 1, 1, tzinfo=UTC),
        "computed_at": datetime(2026, 1, 2, tzinfo=UTC),
    }
    row.update(changes)
    return row


def test_schema_mismatch_lists_every_differing_column(spark, lake_settings):
    from pyspark.sql import functions as F

    good = spark.createDataFrame(
        [_fleet_row("r1")], schema=tables.get_table("fleet_summary").spark_schema
    )
    lake.write_table(good, "fleet_summary", lake_settings)
    bad = (
        good.drop("at_risk")
        .withColumn("machines", F.col("machines").cast("string"))
        .withColumn("colour", F.lit("red"))
    )
    with pytest.raises(SchemaMismatchError) as error:
        lake.write_table(bad, "fleet_summary", lake_settings)
    message = str(error.value)
    assert "table 'fleet_summary'" in message
    assert "missing column at_risk (bigint)" in message
    assert "extra column colour (string)" in message
    assert "column machines: type string, expected bigint" in message
    assert lake.read_table(spark, "fleet_summary", lake_settings).count() == 1
    assert_same_through_delta_rs(spark, "fleet_summary", lake_settings)


def test_schema_evolution_only_when_asked(spark, lake_settings):
    from pyspark.sql import functions as F

    row = spark.createDataFrame(
        [_fleet_row("r1")], schema=tables.get_table("fleet_summary").spark_schema
    )
    tables.check_schema(row.withColumn("extra", F.lit(1)), "fleet_summary", allow_evolution=True)
    with pytest.raises(SchemaMismatchError, match="column machines: type string"):
        tables.check_schema(
            row.withColumn("machines", F.col("machines").cast("string")),
            "fleet_summary",
            allow_evolution=True,
        )


def test_existing_table_with_other_schema_is_refused(spark, lake_settings):
    path = tables.table_path("alerts", lake_settings)
    spark.range(3).write.format("delta").save(str(path))
    with pytest.raises(SchemaMismatchError, match=r"table 'alerts'.*extra column id"):
        tables.create_table(spark, "alerts", lake_settings)


def test_table_path_holding_non_delta_files_is_a_clear_error(spark, lake_settings):
    path = tables.table_path("silver", lake_settings)
    path.mkdir(parents=True)
    (path / "part-0000.csv").write_text("a,b\n1,2\n")
    with pytest.raises(tables.TableLocationError, match="holds files but no Delta log"):
        tables.create_table(spark, "silver", lake_settings)
    with pytest.raises(tables.TableLocationError, match="holds no Delta log"):
        lake.read_table_arrow("silver", lake_settings)
    with pytest.raises(tables.TableLocationError, match="holds no Delta log"):
        lake.read_table(spark, "silver", lake_settings)
    with pytest.raises(tables.TableLocationError, match="does not exist"):
        lake.read_table_arrow("alerts", lake_settings)
