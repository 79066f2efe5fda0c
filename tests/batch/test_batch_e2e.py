"""Batch layer end to end: replay FD001 -> `airflow dags test batch_layer` -> tables.

One Airflow run (the module fixture, with a champion in the registry) is checked by several
tests; a backfill in `airflow standalone` that reprocesses the same logical date, duplicate
replays and a plain shell spark-submit follow on the same lake (the gate has its own module).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prognos.core import lake, stack
from prognos.core.airflow_env import airflow_env, ensure_airflow_db
from prognos.core.alerting import alert_level
from prognos.core.data import load_cmapss
from prognos.core.features import FEATURE_COLUMNS, compute_features, fit_condition_model
from prognos.core.replay import fleet_frame, replay
from prognos.core.settings import PROJECT_ROOT
from tests.conftest import free_port, make_settings
from tests.speed import support as S

# spark-submit per task: a whole DAG run takes minutes on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

MACHINES = 3
LOGICAL_DATE = "2026-11-20T00:00:00+00:00"
START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)


def lake_settings(broker_settings, state_dir, **overrides):
    """Settings on the test broker with their own lake and topic."""
    return make_settings(
        state_dir,
        kafka_bootstrap_servers=broker_settings.kafka_bootstrap_servers,
        kafka_controller_port=broker_settings.kafka_controller_port,
        kafka_external=True,
        topic_readings=f"readings-{uuid.uuid4().hex[:8]}",
        topic_readings_partitions=3,
        **overrides,
    )


def produce(settings, records: list[tuple[bytes, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    for key, value in records:
        producer.send(settings.topic_readings, key=key, value=value)
    producer.flush()
    producer.close()


def end_offsets(settings) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        parts = consumer.partitions_for_topic(settings.topic_readings)
        tps = [TopicPartition(settings.topic_readings, p) for p in parts]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def good_event(machine: str, cycle: int, **changes) -> dict:
    event = {
        "schema_version": 1,
        "machine_id": machine,
        "cycle": cycle,
        "event_time": (START + timedelta(minutes=cycle)).isoformat().replace("+00:00", "Z"),
        "settings": dict(
            load_cmapss("FD001", "train").iloc[0][[f"setting_{i}" for i in range(1, 4)]]
        ),
        "sensors": dict(
            load_cmapss("FD001", "train").iloc[0][[f"sensor_{i}" for i in range(1, 22)]]
        ),
        "source": "test",
    }
    event.update(changes)
    return event


def bad_records() -> dict[str, tuple[bytes, bytes, list[str]]]:
    """name -> (key, value, a reason the quarantine must give)."""
    sensors = good_event("x", 1)["sensors"]
    out_of_range = good_event("FD001-train-0900", 1, sensors={**sensors, "sensor_9": 1e9})
    missing = good_event("FD001-train-0901", 1)
    missing.pop("cycle")
    future = good_event("FD001-train-0902", 1, event_time="2099-01-01T00:00:00Z")
    wrong_type = good_event("FD001-train-0903", 1)
    wrong_type["cycle"] = "seven"
    duplicate = good_event("FD001-train-0001", 1, source="again")
    cases = {
        "malformed_json": (b"{not json", "valid_json"),
        "wrong_type": (json.dumps(wrong_type).encode(), "type:cycle"),
        "missing_field": (json.dumps(missing).encode(), "required:cycle"),
        "out_of_range": (json.dumps(out_of_range).encode(), "range:sensor_9"),
        "future": (json.dumps(future).encode(), "event_time_not_future"),
        "duplicate": (json.dumps(duplicate).encode(), "duplicate:machine_id,cycle"),
    }
    return {name: (b"FD001-train-0001", value, reason) for name, (value, reason) in cases.items()}


def run_dag(settings) -> subprocess.CompletedProcess:
    env = airflow_env(
        settings, base={k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    )
    ensure_airflow_db(settings, env)
    return subprocess.run(
        ["airflow", "dags", "test", "batch_layer", LOGICAL_DATE],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=PROJECT_ROOT,
    )


def table(settings, name) -> pd.DataFrame:
    return lake.read_table_arrow(name, settings).to_pandas()


@pytest.fixture(scope="module")
def batch(broker_settings, tmp_path_factory):
    """Replay 3 FD001 train machines + the bad records, then one Airflow run."""
    settings = lake_settings(broker_settings, tmp_path_factory.mktemp("batch-lake"))
    stack.ensure_topics(settings)
    summary = replay("FD001", "train", machines=MACHINES, start=START, settings=settings)
    assert summary.failed == 0
    produce(settings, [(key, value) for key, value, _ in bad_records().values()])
    champion = S.register_model(settings, offset=20.0)  # views score with it
    result = run_dag(settings)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    fleet = fleet_frame("FD001", "train", machines=MACHINES)
    return {
        "settings": settings,
        "sent": summary.sent + len(bad_records()),
        "fleet": fleet,
        "champion": champion,
        "snapshot": snapshot(settings),
    }


# The backfill runs first after the fixture (it leaves the lake's contents as they were):
# while a worker has more than two tests of this module left, xdist queues no other module
# behind it. It is one DAG run of five spark-submits through the scheduler, ~5 min on a
# quiet 2-core machine; the wait leaves room for a machine several times slower.
BACKFILL_TIMEOUT_S = 2400


@pytest.mark.timeout(3000)  # the wait above plus the reserialize, create and stop
def test_a_backfill_in_airflow_standalone_reprocesses_the_run_date_idempotently(batch):
    """`airflow standalone` parses the DAGs without import errors; `airflow backfill create`
    of the logical date the fixture already ran (`--reprocess-behavior completed`) runs it
    again through the scheduler; the lake ends with the same contents, so re-running a
    logical date changes nothing (table versions advance). One date proves the scheduler,
    the backfill and the idempotency; each further date would cost a whole DAG run."""
    settings = batch["settings"].model_copy(update={"airflow_port": free_port()})
    env = airflow_env(
        settings, base={k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    )
    env["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"  # only the backfill's runs
    versions = lake.table_version_arrow("machine_state", settings)
    # The backfill is created before the scheduler starts: beside it, SQLite's lock can fail
    # `backfill create` after it committed the backfill but not its runs, and on SQLite
    # Airflow leaves that half-made backfill behind (a retry gets AlreadyRunningBackfill).
    assert airflow(env, "dags", "reserialize").returncode == 0
    assert airflow(env, "dags", "unpause", "batch_layer").returncode == 0
    date = datetime.fromisoformat(LOGICAL_DATE)
    created = airflow(
        env, "backfill", "create", "--dag-id", "batch_layer",
        "--from-date", date.isoformat(), "--to-date", date.isoformat(),
        "--max-active-runs", "1", "--reprocess-behavior", "completed",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr[-2000:]
    with airflow_standalone(env) as standalone:
        runs = wait_until(
            lambda: finished_backfill_runs(settings, {date}), standalone, BACKFILL_TIMEOUT_S
        )
        errors = import_errors(env)  # as the standalone's DAG processor found them
    assert runs == {date: "success"}, runs
    assert lake.table_version_arrow("machine_state", settings) > versions
    assert not [e for e in errors if Path(e["filepath"]).name in PROJECT_DAG_FILES], errors
    assert_same_contents(batch["snapshot"], snapshot(settings))


def test_bronze_holds_every_event_sent(batch):
    assert len(table(batch["settings"], "bronze")) == batch["sent"]


def test_silver_equals_the_deduplicated_valid_events(batch):
    silver = table(batch["settings"], "silver").sort_values(["machine_id", "cycle"])
    fleet = batch["fleet"].sort_values(["machine", "cycle"])
    assert len(silver) == len(fleet)
    assert list(silver["machine_id"]) == list(fleet["machine"])
    assert list(silver["cycle"]) == list(fleet["cycle"])
    np.testing.assert_allclose(silver["sensor_4"].to_numpy(), fleet["sensor_4"].to_numpy())
    first = silver[(silver.machine_id == "FD001-train-0001") & (silver.cycle == 1)]
    assert first["source"].item() == "replay"  # the first copy wins, the duplicate is quarantined


def test_each_bad_input_is_quarantined_with_its_reason(batch):
    quarantine = table(batch["settings"], "quarantine")
    by_value = {
        bytes(v): list(r) for v, r in zip(quarantine["value"], quarantine["reasons"], strict=True)
    }
    for name, (_, value, reason) in bad_records().items():
        assert value in by_value, name
        assert reason in by_value[value], (name, by_value[value])
    assert len(quarantine) == len(bad_records())
    assert quarantine["kafka_offset"].notna().all() and quarantine["topic"].notna().all()


def test_validation_results_are_persisted(batch):
    results = table(batch["settings"], "validation_results").groupby("rule")
    counts = results["unexpected_count"].sum()
    assert counts["valid_json"] == 1 and counts["cycle_positive"] == 0
    assert counts["duplicate:machine_id,cycle"] == 1
    assert results["passed"].all()["required:machine_id"]


def test_gold_has_the_shared_features_point_in_time(batch):
    gold = table(batch["settings"], "gold_features")
    assert set(FEATURE_COLUMNS) <= set(gold.columns)
    assert len(gold) == len(batch["fleet"])
    history = batch["fleet"][batch["fleet"]["machine"] == "FD001-train-0002"]
    history = history.rename(columns={"machine_id": "unit", "machine": "machine_id"})
    expected = compute_features(history, fit_condition_model(load_cmapss("FD001", "train")))
    got = gold[gold.machine_id == "FD001-train-0002"].sort_values("cycle")
    np.testing.assert_allclose(
        got[FEATURE_COLUMNS].to_numpy(), expected[FEATURE_COLUMNS].to_numpy(), rtol=1e-9
    )


def test_machine_state_has_each_machine_at_its_latest_cycle(batch):
    state = table(batch["settings"], "machine_state").set_index("machine_id")
    last = batch["fleet"].groupby("machine")["cycle"].max()
    assert sorted(state.index) == sorted(last.index)
    for machine, cycle in last.items():
        assert state.loc[machine, "last_cycle"] == cycle
    assert state["predicted_rul"].notna().all()  # scored by the champion in spark-submit
    assert set(state["model_version"]) == {str(batch["champion"])}
    for rul, level in zip(state["predicted_rul"], state["alert_level"], strict=True):
        assert level == alert_level(rul, batch["settings"])
    summary = table(batch["settings"], "fleet_summary").iloc[0]
    assert sum(dict(summary["machines_by_level"]).values()) == MACHINES


def test_manifest_offsets_equal_the_topic_end_offsets(batch):
    published = lake.read_published_arrow(batch["settings"])
    manifest = published.manifest
    assert {int(k): int(v) for k, v in manifest["partition_offsets"].items()} == end_offsets(
        batch["settings"]
    )
    assert manifest["rows_covered"] == len(batch["fleet"])
    details = json.loads(manifest["details"])
    assert details["model_version"] == str(batch["champion"])
    assert details["input_versions"]["silver"] is not None


def snapshot(settings) -> dict:
    names = ["bronze", "silver", "quarantine", "gold_features", "machine_state", "fleet_summary"]
    frames = {}
    for name in names:
        frame = table(settings, name).drop(
            columns=["ingest_time", "quarantined_at"], errors="ignore"
        )
        key = [
            c
            for c in (
                "machine_id",
                "cycle",
                "kafka_partition",
                "kafka_offset",
                "partition",
                "offset",
            )
            if c in frame.columns
        ] or list(frame.columns[:1])
        frames[name] = frame.sort_values(key).reset_index(drop=True)
    return frames


def assert_same_contents(before: dict, after: dict) -> None:
    for name, frame in before.items():
        pd.testing.assert_frame_equal(frame, after[name], obj=name)


SQLITE_LOCKED = "database is locked"


def airflow(env: dict, *args: str, attempts: int = 5) -> subprocess.CompletedProcess:
    """An `airflow` CLI command, run again when SQLite refused its write: beside the
    standalone scheduler, a command whose transaction read first and then writes gets
    "database is locked" at once (SQLite refuses a lock upgrade that could deadlock, so
    the busy timeout does not help); its transaction was rolled back, so a retry is safe."""
    for attempt in range(attempts):
        done = subprocess.run(
            ["airflow", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=PROJECT_ROOT,
        )
        if done.returncode == 0 or SQLITE_LOCKED not in done.stderr:
            break
        time.sleep(5 * (attempt + 1))
    return done


@contextlib.contextmanager
def airflow_standalone(env: dict):
    """`airflow standalone` in its own process group, stopped (SIGINT, then SIGKILL) after."""
    log = open(Path(env["AIRFLOW_HOME"]) / "standalone.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        ["airflow", "standalone"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        stop_group(process)
        log.close()


def stop_group(process: subprocess.Popen) -> None:
    for sig, grace_s in ((signal.SIGINT, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            os.killpg(process.pid, signal.SIGKILL)  # children left behind by the leader
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until(probe, standalone: subprocess.Popen, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert standalone.poll() is None, "airflow standalone exited"
        found = probe()
        if found:
            return found
        time.sleep(5)
    raise AssertionError(f"not done after {timeout_s} s")


PROJECT_DAG_FILES = ("batch_layer.py", "lake_maintenance.py")


def import_errors(env: dict) -> list[dict]:
    listed = airflow(env, "dags", "list-import-errors", "-o", "json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    return json_output(listed.stdout)


def json_output(stdout: str) -> list:
    """The JSON list an `airflow ... -o json` command printed (log lines may precede it)."""
    lines = [line for line in stdout.splitlines() if line.startswith("[{") or line == "[]"]
    return json.loads(lines[-1]) if lines else []


def finished_backfill_runs(settings, logical_dates: set[datetime]) -> dict | None:
    """{logical date: state} of the backfill runs of these dates once all finished, else
    None. (A reprocessed run keeps its run id; `backfill create` has queued it and made it
    a backfill run on return.) Read from Airflow's SQLite database: an `airflow dags
    list-runs` every few seconds would cost the DAG run's own tasks seconds of CPU each."""
    database = f"file:{settings.state_dir / 'airflow' / 'airflow.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(database, uri=True, timeout=60)) as db:
        rows = db.execute(
            "SELECT logical_date, state FROM dag_run "
            "WHERE dag_id = 'batch_layer' AND run_type = 'backfill'"
        ).fetchall()
    states = {
        datetime.fromisoformat(logical).replace(tzinfo=UTC): state
        for logical, state in rows
        if logical and datetime.fromisoformat(logical).replace(tzinfo=UTC) in logical_dates
    }
    done = {k: v for k, v in states.items() if v in ("success", "failed")}
    return done if len(done) == len(logical_dates) or "failed" in done.values() else None


def shell_spark_submit(settings, job: str, *args: str) -> subprocess.CompletedProcess:
    """`spark-submit spark_jobs/<job>.py ...` typed in a shell, as a user would."""
    env = airflow_env(
        settings, base={k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    )
    line = " ".join(["spark-submit", f"spark_jobs/{job}.py", *args])
    return subprocess.run(
        ["bash", "-c", line], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900
    )


def test_replaying_the_same_events_twice_leaves_silver_unchanged(batch, spark):
    from spark_jobs import silver

    settings = batch["settings"]
    before = snapshot(settings)["silver"]
    again = replay("FD001", "train", machines=MACHINES, start=START, settings=settings)
    result = shell_spark_submit(settings, "bronze_ingest", "--run-id", "replayed-twice")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["result"]["bronze_version"] >= 2
    totals = silver.run(spark, settings, "replayed-twice")
    assert totals["rows"] == again.sent and totals["duplicates"] == again.sent
    pd.testing.assert_frame_equal(before, snapshot(settings)["silver"])
    quarantine = table(settings, "quarantine")
    replayed = quarantine[quarantine["run_id"] == "replayed-twice"]
    assert len(replayed) == again.sent
    assert all(list(r) == ["duplicate:machine_id,cycle"] for r in replayed["reasons"])
