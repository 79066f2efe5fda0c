"""A real 3-node KRaft Kafka cluster: settings and layout checks (unit), and a replay while
the leader of a readings partition is SIGKILLed and later restarted (slow).

The slow test replays a small C-MAPSS fleet (prognos.core.replay, acks=all, idempotent)
into a readings topic replicated 3 times with min.insync.replicas=2, while the speed
layer's query and a continuous bronze stream read it. Mid-stream the leader of readings
partition 0 is killed; the cluster elects another in-sync replica. Then bronze, silver,
the speed view and the serving layer's merged answer are counted against the events the
broker acknowledged: none lost, none duplicated. The time each of the producer, the
speed query and the bronze stream went without progress is printed and written to
<tmp>/kafka_cluster_report.json.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from prognos.core import kafka_cluster, lake, replay, stack
from prognos.core.settings import SettingsError, load_settings
from tests.conftest import make_settings
from tests.speed import support as S

MACHINES = 8  # FD001 test engines 1-8: 841 readings
RATE = 40.0  # events/s: the replay lasts ~21 s
KILL_AFTER_S = 5.0
DOWN_FOR_S = 12.0
SAMPLE_S = 0.25


# --- settings and layout (no broker) -------------------------------------------------------


@pytest.mark.unit
def test_a_cluster_setting_places_every_node_on_its_own_ports(tmp_path):
    settings = load_settings(state_dir=tmp_path, kafka_cluster_size=3)
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert (settings.topic_replication_factor, settings.topic_min_insync_replicas) == (3, 2)
    placed = kafka_cluster.nodes(settings)
    assert [(n.node_id, n.port, n.controller_port) for n in placed] == [
        (1, 9092, 9093),
        (2, 9094, 9095),
        (3, 9096, 9097),
    ]
    assert len({n.data for n in placed}) == 3
    single = load_settings(state_dir=tmp_path)
    assert (single.topic_replication_factor, single.topic_min_insync_replicas) == (1, 1)


@pytest.mark.unit
def test_topics_are_created_replicated_as_the_settings_say(tmp_path):
    from prognos.core.catalog import topics

    for spec in topics(load_settings(state_dir=tmp_path, kafka_cluster_size=3)).values():
        assert (spec.replication_factor, spec.configs) == (3, {"min.insync.replicas": "2"})
    for spec in topics(load_settings(state_dir=tmp_path)).values():
        assert (spec.replication_factor, spec.configs) == (1, {"min.insync.replicas": "1"})


@pytest.mark.unit
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka_cluster_size": 3, "kafka_bootstrap_servers": "a:1,a:3"}, "one address per node"),
        ({"kafka_replication_factor": 3}, "exceeds kafka_cluster_size=1"),
        ({"kafka_cluster_size": 3, "kafka_min_insync_replicas": 4}, "exceeds the replication"),
        ({"kafka_cluster_size": 0}, "kafka_cluster_size"),
    ],
)
def test_an_impossible_cluster_setting_is_refused_naming_it(tmp_path, values, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(state_dir=tmp_path, **values)


@pytest.mark.unit
def test_down_and_status_find_the_cluster_up_started(tmp_path):
    cluster = load_settings(state_dir=tmp_path, kafka_cluster_size=3)
    kafka_cluster._record_layout(cluster)
    found = kafka_cluster.recorded(load_settings(state_dir=tmp_path))
    assert (found.kafka_cluster_size, found.kafka_bootstrap_servers) == (
        3,
        cluster.kafka_bootstrap_servers,
    )
    assert kafka_cluster.down(found, grace_s=1) == []  # nothing runs: nothing stopped
    assert kafka_cluster.recorded(load_settings(state_dir=tmp_path)).kafka_cluster_size == 1


# --- the cluster under a leader's crash ------------------------------------------------------


def free_port_block(count: int) -> int:
    """A first port such that it and the next count-1 ports are free on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count < 65535 and all(_bindable(base + k) for k in range(count)):
            return base
    raise AssertionError(f"no block of {count} free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-node cluster on free ports, its topics replicated 3 times; stopped also on failure."""
    base = free_port_block(6)
    settings = make_settings(
        tmp_path_factory.mktemp("kafka-cluster"),
        kafka_cluster_size=3,
        kafka_bootstrap_servers=f"127.0.0.1:{base}",
        kafka_controller_port=base + 1,
        kafka_heap="256m",
        topic_readings=f"readings-{uuid.uuid4().hex[:8]}",
        topic_readings_partitions=2,
        speed_trigger="1 second",
        speed_metrics_port=0,
        serving_model="rul_cluster",
    )
    try:
        stack.up(settings, timeout_s=180)
        yield settings
    finally:
        stack.down(settings, timeout_s=20)


class Progress:
    """Samples, every SAMPLE_S, per readings partition the offset the cluster has
    committed (the producer's acknowledged progress) and the one each streaming query has
    read up to."""

    def __init__(self, settings, queries: dict):
        from kafka import KafkaConsumer, TopicPartition

        self.queries = queries
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=4000
        )
        self.partitions = [
            TopicPartition(settings.topic_readings, p)
            for p in range(settings.topic_readings_partitions)
        ]
        self.samples: list[dict] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Progress:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.done.set()
        self.thread.join(30)
        self.consumer.close()

    def _run(self) -> None:
        while not self.done.is_set():
            sample = {"t": time.monotonic(), "committed": self._committed()}
            for name, query in self.queries.items():
                sample[name] = _read_offsets(query)
            self.samples.append(sample)
            self.done.wait(SAMPLE_S)

    def _committed(self) -> dict[int, int] | None:
        from kafka.errors import KafkaError

        try:
            ends = self.consumer.end_offsets(self.partitions)
        except (KafkaError, OSError, ValueError):
            return None  # no answer in time: the election is under way
        return {tp.partition: offset for tp, offset in ends.items()}

    def longest_stall(self, name: str, partition: int, since: float, until: float) -> float:
        """Longest time in [since, until] the partition's offset did not grow while there
        was work: for the producer while it sent, for a query while it was behind the
        committed end."""
        stall, last_growth, last_value, committed = 0.0, since, None, 0
        for sample in self.samples:
            if sample["committed"] is not None:
                committed = sample["committed"][partition]
            value = (sample[name] or {}).get(partition)
            if value is None:
                continue
            if sample["t"] < since:  # the offset reached before the crash
                last_value = value
                continue
            caught_up = name != "committed" and value >= committed
            if last_value is None or value > last_value or caught_up:
                last_growth, last_value = sample["t"], value
            stall = max(stall, min(sample["t"], until) - last_growth)
            if sample["t"] > until:
                break
        return round(stall, 2)


def _read_offsets(query) -> dict[int, int] | None:
    """Per partition, the Kafka offset the query's last micro-batch read up to."""
    progress = query.lastProgress
    if not progress:
        return None
    end = progress["sources"][0]["endOffset"]
    end = json.loads(end) if isinstance(end, str) else end
    return {int(p): offset for partitions in end.values() for p, offset in partitions.items()}


def start_bronze_stream(spark, settings):
    """The bronze ingest as a continuous stream (the same checkpoint a later availableNow
    run of spark_jobs.bronze_ingest continues from)."""
    from spark_jobs import bronze_ingest

    return lake.append_stream_to_delta(
        lake.to_bronze(lake.kafka_stream(spark, settings, settings.topic_readings)),
        "bronze",
        settings,
        checkpoint=lake.checkpoint_path(settings, bronze_ingest.QUERY_NAME),
        trigger="processingTime=1 second",
        query_name=f"{bronze_ingest.QUERY_NAME}-{uuid.uuid4().hex[:6]}",
    )


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def all_in_sync(settings) -> bool:
    isr = kafka_cluster.in_sync_replicas(settings, settings.topic_readings)
    return all(replicas == [1, 2, 3] for replicas in isr.values())


def new_leader(settings, partition: int, killed: int) -> int | None:
    from kafka.errors import KafkaError

    try:
        leader = kafka_cluster.partition_leaders(settings, settings.topic_readings)[partition]
    except (KafkaError, OSError):
        return None
    return leader if leader not in (-1, killed) else None


def expected_readings(settings) -> set[tuple[str, int]]:
    fleet = replay.fleet_frame("FD001", "test", MACHINES, settings=settings)
    return set(zip(fleet["machine"], fleet["cycle"].astype(int), strict=True))


def speed_view_counts(settings) -> dict[str, int]:
    try:
        view = lake.read_table_arrow("speed_view", settings).to_pylist()
    except Exception:  # not created until the first micro-batch wrote it
        return {}
    return {row["machine_id"]: row["readings_count"] for row in view}


def lake_counts(spark, settings) -> dict:
    from pyspark.sql import functions as F

    bronze = lake.read_table(spark, "bronze", settings).where(
        F.col("topic") == settings.topic_readings
    )
    events = bronze.select(
        F.get_json_object(F.col("value").cast("string"), "$.machine_id").alias("machine"),
        F.get_json_object(F.col("value").cast("string"), "$.cycle").cast("int").alias("cycle"),
    )
    silver = lake.read_table(spark, "silver", settings)
    return {
        "bronze_rows": bronze.count(),
        "bronze_distinct_events": events.distinct().count(),
        "bronze_events": {(r.machine, r.cycle) for r in events.collect()},
        "silver_rows": silver.count(),
        "silver_events": {(r.machine_id, r.cycle) for r in silver.collect()},
    }


def merged_counts(settings) -> dict[str, int]:
    from prognos.core.alerting import alert_level
    from serving_layer.snapshot import SnapshotStore
    from serving_layer.views import DeltaViews

    store = SnapshotStore(DeltaViews(settings), lambda rul: alert_level(rul, settings))
    store.refresh()
    return {m: s["readings_count"] for m, s in store.current.machines.items()}


@pytest.mark.slow
def test_a_leader_crash_loses_and_duplicates_no_reading(spark, cluster, tmp_path):
    from spark_jobs import bronze_ingest, silver, views
    from speed_layer.stream import build_query

    settings = cluster
    assert all_in_sync(settings)
    S.register_model(settings, offset=100.0)
    expected = expected_readings(settings)
    per_machine = {m: sum(1 for e in expected if e[0] == m) for m, _ in expected}
    previous_partitions = spark.conf.get("spark.sql.shuffle.partitions")
    speed = build_query(spark, settings)
    bronze = start_bronze_stream(spark, settings)
    progress = Progress(settings, {"speed": speed, "bronze": bronze}).start()
    outcome: dict = {}
    producer = threading.Thread(
        target=lambda: outcome.update(
            summary=replay.replay(
                "FD001", "test", MACHINES, RATE, cycle_seconds=1.0, settings=settings
            )
        )
    )
    try:
        began = time.monotonic()
        producer.start()
        time.sleep(KILL_AFTER_S)
        killed = kafka_cluster.partition_leaders(settings, settings.topic_readings)[0]
        killed_pid = kafka_cluster.node(settings, killed).pid_file.read_text().strip()
        kafka_cluster.kill_node(settings, killed)
        killed_at = time.monotonic()
        elected = wait_for(lambda: new_leader(settings, 0, killed), 60, "a new leader")
        elected_at = time.monotonic()
        time.sleep(max(0.0, DOWN_FOR_S - (elected_at - killed_at)))
        kafka_cluster.start_node(settings, killed)
        restarted_at = time.monotonic()
        producer.join(180)
        assert not producer.is_alive(), "the replay did not finish"
        replay_done_at = time.monotonic()
        kafka_cluster.wait_for_brokers(settings, {1, 2, 3}, timeout_s=120)
        wait_for(lambda: all_in_sync(settings), 120, "the restarted node back in sync")
        summary = outcome["summary"]
        assert (summary.sent, summary.failed) == (len(expected), 0), summary
        wait_for(
            lambda: (
                sum(speed_view_counts(settings).values()) >= summary.sent
                or speed.exception() is not None
            ),
            300,
            "the speed view caught up",
        )
        assert speed.exception() is None, speed.exception()
        wait_for(
            lambda: sum((_read_offsets(bronze) or {}).values()) >= summary.sent,
            120,
            "bronze caught up",
        )
        caught_up_at = time.monotonic()
    finally:
        progress.stop()
        for query in (speed, bronze):
            query.stop()
        spark.conf.set("spark.sql.shuffle.partitions", previous_partitions)
        if producer.is_alive():
            producer.join(60)

    assert speed_view_counts(settings) == per_machine
    bronze_ingest.ingest(spark, settings)  # continues the stream's checkpoint: adds nothing
    run_id = f"cluster-{uuid.uuid4().hex[:6]}"
    silver.run(spark, settings, run_id)
    counts = lake_counts(spark, settings)
    assert counts["bronze_rows"] == counts["bronze_distinct_events"] == summary.sent
    assert counts["bronze_events"] == expected
    assert counts["silver_rows"] == len(expected) and counts["silver_events"] == expected
    published = views.build(spark, settings, run_id, datetime.now(UTC))
    assert published["published"], published
    assert merged_counts(settings) == per_machine

    report = {
        "events_sent": summary.sent,
        "events_failed": summary.failed,
        "killed_node": int(killed),
        "killed_pid": int(killed_pid),
        "new_leader": int(elected),
        "leader_election_s": round(elected_at - killed_at, 2),
        "node_down_s": round(restarted_at - killed_at, 2),
        "replay_s": round(replay_done_at - began, 2),
        "caught_up_after_kill_s": round(caught_up_at - killed_at, 2),
        "time_without_progress_s": {  # on the partition whose leader was killed
            "producer": progress.longest_stall("committed", 0, killed_at, replay_done_at),
            "speed_query": progress.longest_stall("speed", 0, killed_at, caught_up_at),
            "bronze_stream": progress.longest_stall("bronze", 0, killed_at, caught_up_at),
        },
        "counts": {
            "bronze": counts["bronze_rows"],
            "silver": counts["silver_rows"],
            "speed_view": sum(per_machine.values()),
            "merged": sum(merged_counts(settings).values()),
        },
    }
    (tmp_path / "kafka_cluster_report.json").write_text(json.dumps(report, indent=2))
    print("kafka cluster leader crash:", json.dumps(report))
